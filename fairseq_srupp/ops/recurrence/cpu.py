"""Fast CPU path of the elementwise recurrence: a fused C++ loop with a hand-written backward.

The C++ source ships next to this file and is compiled with ``torch.utils.cpp_extension`` on the
first call (about a minute, cached under ``TORCH_EXTENSIONS_DIR``), never at import.
"""
import logging
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("recurrence_cpu.cpp")
_extension = None


class ExtensionBuildError(RuntimeError):
    pass


def load_cpu_extension():
    """Compile (first call only) and return the C++ extension module."""
    global _extension
    if _extension is None:
        from torch.utils.cpp_extension import load

        try:
            logger.info("loading the SRU++ CPU recurrence extension (compiled on first use)")
            _extension = load(
                name="fairseq_srupp_recurrence_cpu",
                sources=[str(_SOURCE)],
                # OpenMP: at::parallel_for is serial without it. -ffast-math lets the compiler use
                # vectorised expf for the gates; the build happens on the machine that runs it.
                extra_cflags=["-O3", "-std=c++20", "-fopenmp", "-ffast-math", "-march=native"],
                extra_ldflags=["-fopenmp"],
                verbose=False,
            )
        except Exception as err:  # compiler, ninja or headers missing
            raise ExtensionBuildError(
                "could not build the SRU++ CPU recurrence extension from {}: {}\n"
                "It needs a C++ compiler (g++) and ninja (`pip install ninja`). "
                "Set FAIRSEQ_SRUPP_RECURRENCE=reference to run the slow pure-PyTorch path "
                "instead.".format(_SOURCE, err)
            ) from err
    return _extension


class ElementwiseRecurrenceCPU(torch.autograd.Function):
    """Autograd wrapper; inputs must already be validated, contiguous and of one float dtype."""

    @staticmethod
    def forward(ctx, U, x, weight_c, bias, c0, mask_c, mask_pad):
        ext = load_cpu_extension()
        k = U.shape[-1] // c0.shape[-1]
        h, c_all = ext.forward(U, x, weight_c, bias, c0, mask_c, mask_pad, k)
        ctx.k = k
        ctx.save_for_backward(U, x, weight_c, bias, c0, mask_c, mask_pad, c_all)
        ctx.mark_non_differentiable(c_all)
        return h, c_all[-1].clone()

    @staticmethod
    def backward(ctx, grad_h, grad_c_last):
        U, x, weight_c, bias, c0, mask_c, mask_pad, c_all = ctx.saved_tensors
        if grad_h is None:
            grad_h = torch.zeros_like(c_all)
        if grad_c_last is None:
            grad_c_last = torch.zeros_like(c0)
        grad_U, grad_x, grad_wc, grad_bias, grad_c0 = load_cpu_extension().backward(
            U, x, weight_c, bias, c0, mask_c, mask_pad, c_all,
            grad_h.contiguous(), grad_c_last.contiguous(), ctx.k,
        )
        if ctx.k != 3:
            grad_x = None
        return grad_U, grad_x, grad_wc, grad_bias, grad_c0, None, None


def elementwise_recurrence_cpu(
    U: Tensor,
    x: Optional[Tensor],
    weight_c: Tensor,
    bias: Tensor,
    c0: Tensor,
    mask_c: Optional[Tensor] = None,
    mask_pad: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Same contract as :func:`elementwise_recurrence_ref`; fp16/bf16 compute in fp32."""
    out_dtype = U.dtype
    dtype = torch.float64 if out_dtype == torch.float64 else torch.float32

    def prep(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else t.to(dtype).contiguous()

    k = U.shape[-1] // c0.shape[-1]
    h, c_last = ElementwiseRecurrenceCPU.apply(
        prep(U),
        prep(x) if k == 3 else None,
        prep(weight_c),
        prep(bias),
        prep(c0),
        prep(mask_c),
        None if mask_pad is None else mask_pad.to(torch.bool).contiguous(),
    )
    return h.to(out_dtype), c_last.to(out_dtype)
