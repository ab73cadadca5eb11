"""Byte-level data helpers; importing the package registers the ``srupp_bytes`` BPE."""
from . import byte_bpe  # noqa: F401  (registers --bpe srupp_bytes)
