"""Command-line tools that work on roots and files (no services needed)."""
