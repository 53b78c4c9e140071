"""wsss_fast.nn."""
