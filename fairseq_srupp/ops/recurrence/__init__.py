"""The SRU++ elementwise recurrence (spec §1.4) and the dispatch between its implementations.

``elementwise_recurrence`` validates its inputs and picks an implementation:

* ``reference``: :func:`elementwise_recurrence_ref`, a pure-PyTorch time loop (autograd).
* ``cpu``: :func:`elementwise_recurrence_cpu`, a fused C++ loop with a hand-written backward.
* ``cuda``: :func:`elementwise_recurrence_cuda`, fused CUDA kernels compiled by NVRTC via CuPy.

Automatic choice (:func:`choose_implementation`): CUDA tensors take the CUDA kernel when CuPy is
installed, else the reference with a one-time warning saying how to install CuPy; CPU tensors take
the fused C++ path. The environment variable ``FAIRSEQ_SRUPP_RECURRENCE`` (``auto`` |
``reference`` | ``cpu`` | ``cuda``) forces a choice, e.g. for debugging.
"""
import os
import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor

from .cpu import elementwise_recurrence_cpu
from .cupy_kernel import KERNEL_DTYPES, cupy_available, elementwise_recurrence_cuda
from .reference import elementwise_recurrence_ref

__all__ = [
    "elementwise_recurrence",
    "elementwise_recurrence_cpu",
    "elementwise_recurrence_cuda",
    "elementwise_recurrence_ref",
    "check_recurrence_inputs",
    "choose_implementation",
]

IMPLEMENTATIONS = ("auto", "reference", "cpu", "cuda")
NO_CUPY_WARNING = (
    "CuPy is not installed, so the SRU++ recurrence runs as a slow PyTorch loop on the GPU. "
    "Install the fused CUDA kernel with `pip install -e .[cuda12]` (or `[cuda13]`)."
)
_warned_no_cupy = False


def choose_implementation(choice: str, is_cuda: bool, dtype: torch.dtype, has_cupy: bool) -> Tuple[str, Optional[str]]:
    """(implementation, warning or None) for a requested ``choice`` and the tensors at hand."""
    if choice not in IMPLEMENTATIONS:
        raise ValueError("unknown recurrence implementation {!r}; choose one of {}".format(choice, IMPLEMENTATIONS))
    if choice == "reference":
        return "reference", None
    if choice == "cpu" and is_cuda or choice == "cuda" and not is_cuda:
        raise ValueError("the {!r} recurrence implementation needs {} tensors".format(choice, choice.upper()))
    if not is_cuda:
        return "cpu", None
    if not has_cupy:
        if choice == "cuda":
            raise RuntimeError(NO_CUPY_WARNING)
        return "reference", NO_CUPY_WARNING
    if dtype not in KERNEL_DTYPES:  # float64 on the GPU: the reference handles it
        return "reference", None
    return "cuda", None


def check_recurrence_inputs(U, x, weight_c, bias, c0, mask_c=None, mask_pad=None) -> int:
    """Raise ``ValueError`` naming the expected and actual shape of any bad input; return k."""
    if U.dim() != 3:
        raise ValueError("U must be (L, B, d*k), got shape {}".format(tuple(U.shape)))
    length, batch = U.shape[0], U.shape[1]
    if c0.dim() != 2 or c0.shape[0] != batch:
        raise ValueError("c0 must be (B={}, d), got {}".format(batch, tuple(c0.shape)))
    d = c0.shape[1]
    if U.shape[2] not in (3 * d, 4 * d):
        raise ValueError(
            "U's last dimension must be 3*d={} or 4*d={}, got {}".format(3 * d, 4 * d, U.shape[2])
        )
    k = U.shape[2] // d
    if k == 3 and (x is None or tuple(x.shape) != (length, batch, d)):
        raise ValueError(
            "with k=3 the skip input x must be (L, B, d)={}, got {}".format(
                (length, batch, d), None if x is None else tuple(x.shape)
            )
        )
    for name, t in (("weight_c", weight_c), ("bias", bias)):
        if tuple(t.shape) != (2 * d,):
            raise ValueError("{} must be (2*d,)={}, got {}".format(name, (2 * d,), tuple(t.shape)))
    if mask_c is not None and tuple(mask_c.shape) != (batch, d):
        raise ValueError("mask_c must be (B, d)={}, got {}".format((batch, d), tuple(mask_c.shape)))
    if mask_pad is not None and tuple(mask_pad.shape) != (length, batch):
        raise ValueError(
            "mask_pad must be (L, B)={}, got {}".format((length, batch), tuple(mask_pad.shape))
        )
    return k


def elementwise_recurrence(
    U: Tensor,
    x: Optional[Tensor],
    weight_c: Tensor,
    bias: Tensor,
    c0: Tensor,
    mask_c: Optional[Tensor] = None,
    mask_pad: Optional[Tensor] = None,
    implementation: Optional[str] = None,
) -> Tuple[Tensor, Tensor]:
    """Run the recurrence with the best available implementation.

    Shapes as in :func:`elementwise_recurrence_ref`: U (L, B, k*d), x (L, B, d) or None when k=4,
    weight_c and bias (2d,), c0 (B, d), mask_c (B, d), mask_pad (L, B) bool. Returns
    h (L, B, d) and the last cell state (B, d).
    """
    global _warned_no_cupy
    check_recurrence_inputs(U, x, weight_c, bias, c0, mask_c, mask_pad)
    choice = implementation or os.environ.get("FAIRSEQ_SRUPP_RECURRENCE", "auto")
    chosen, warning = choose_implementation(choice, U.is_cuda, U.dtype, U.is_cuda and cupy_available())
    if warning is not None and not _warned_no_cupy:
        warnings.warn(warning)
        _warned_no_cupy = True
    run = {
        "reference": elementwise_recurrence_ref,
        "cpu": elementwise_recurrence_cpu,
        "cuda": elementwise_recurrence_cuda,
    }[chosen]
    return run(U, x, weight_c, bias, c0, mask_c, mask_pad)
