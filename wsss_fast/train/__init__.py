"""wsss_fast.train."""
