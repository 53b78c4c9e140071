"""wsss_fast.seg."""
