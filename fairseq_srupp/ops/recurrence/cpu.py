"""Fused CPU kernels of the elementwise recurrence (``recurrence_cpu.cpp``), behind the custom op.

The C++ source ships next to this file and is compiled with ``torch.utils.cpp_extension`` on the
first call (about a minute, cached under ``TORCH_EXTENSIONS_DIR``), never at import.
``forward`` / ``backward`` follow the custom op's contract (see ``op.py``); they are registered as
its CPU implementation there.
"""
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..cpp_extension import load_extension

_SOURCE = Path(__file__).with_name("recurrence_cpu.cpp")
# Every file the build reads: a change to any of them gives a new build name (see build_name).
BUILD_INPUTS = (_SOURCE, _SOURCE.with_name("recurrence_step.h"))
_extension = None


def load_cpu_extension():
    """Compile (first call only, or after the source / CPU changed) and return the C++ extension."""
    global _extension
    if _extension is None:
        _extension = load_extension(
            "fairseq_srupp_recurrence_cpu", _SOURCE, BUILD_INPUTS, "SRU++ CPU recurrence",
            "Set FAIRSEQ_SRUPP_RECURRENCE=reference to run the slow pure-PyTorch path instead.",
        )
    return _extension


def _compute(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if t is None else t.to(dtype)


def forward(U, x, weight_c, bias, c0, mask_c, mask_pad) -> Tuple[Tensor, Tensor, Tensor]:
    """(h in U's dtype, c_last, c_all in c0's dtype). The C++ loop computes in c0's dtype (fp32 or
    fp64), so 16-bit U and x are widened first."""
    k = U.shape[-1] // c0.shape[-1]
    h, c_all = load_cpu_extension().forward(
        _compute(U, c0.dtype), _compute(x, c0.dtype), weight_c, bias, c0, mask_c, mask_pad, k
    )
    return h.to(U.dtype), c_all[-1].clone(), c_all


def backward(U, x, weight_c, bias, c0, mask_c, mask_pad, c_all, grad_h, grad_c_last):
    """(grad_U, grad_x (empty when k=4), grad_weight_c, grad_bias, grad_c0); see ``op.py``."""
    k = U.shape[-1] // c0.shape[-1]
    grad_U, grad_x, grad_wc, grad_bias, grad_c0 = load_cpu_extension().backward(
        _compute(U, c0.dtype), _compute(x, c0.dtype), weight_c, bias, c0, mask_c, mask_pad, c_all,
        grad_h.to(c0.dtype), grad_c_last, k,
    )
    grad_x = grad_x.to(U.dtype) if k == 3 else U.new_empty(0)
    return grad_U.to(U.dtype), grad_x, grad_wc, grad_bias, grad_c0
