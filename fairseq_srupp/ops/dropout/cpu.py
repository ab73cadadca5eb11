"""The C++ build of the fused CPU dropout (``dropout_cpu.cpp``), compiled on first use."""
from pathlib import Path

from ..cpp_extension import load_extension

_SOURCE = Path(__file__).with_name("dropout_cpu.cpp")
_extension = None


def load_dropout_extension():
    """Compile (first call only, or after the source / CPU changed) and return the C++ extension."""
    global _extension
    if _extension is None:
        _extension = load_extension(
            "fairseq_srupp_dropout_cpu", _SOURCE, (_SOURCE,), "SRU++ CPU dropout",
            "Set FAIRSEQ_SRUPP_DROPOUT=torch to use PyTorch's own dropout instead.",
        )
    return _extension
