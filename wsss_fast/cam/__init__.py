"""wsss_fast.cam."""
