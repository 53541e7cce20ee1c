"""Helpers the kernel keeps under lib/ (checksums) and include/linux (address helpers)."""
