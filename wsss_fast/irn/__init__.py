"""wsss_fast.irn."""
