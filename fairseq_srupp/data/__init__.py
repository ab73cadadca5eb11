"""Byte-level data helpers; importing the package registers the ``srupp_bytes`` BPE."""
from . import byte_bpe  # noqa: F401  (registers --bpe srupp_bytes)

from fairseq_srupp import register as _register  # noqa: E402

_register()  # importing one fairseq-facing subpackage registers them all
