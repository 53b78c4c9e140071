"""Command-line interface: ``wsss-fast <command> --config FILE --out DIR [key=value ...]``."""
