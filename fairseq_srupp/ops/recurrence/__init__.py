"""The SRU++ elementwise recurrence (spec §1.4) and the dispatch between its implementations.

``elementwise_recurrence`` validates its inputs and picks an implementation:

* ``reference``: :func:`elementwise_recurrence_ref`, a pure-PyTorch time loop (autograd).
* ``cpu``: :func:`elementwise_recurrence_cpu`, a fused C++ loop with a hand-written backward.
* CUDA tensors currently take the reference path; a fused CUDA kernel slots in here.

The environment variable ``FAIRSEQ_SRUPP_RECURRENCE`` (``auto`` | ``reference`` | ``cpu``)
forces a choice, e.g. for debugging.
"""
import os
from typing import Optional, Tuple

from torch import Tensor

from .cpu import elementwise_recurrence_cpu
from .reference import elementwise_recurrence_ref

__all__ = [
    "elementwise_recurrence",
    "elementwise_recurrence_cpu",
    "elementwise_recurrence_ref",
    "check_recurrence_inputs",
]

IMPLEMENTATIONS = ("auto", "reference", "cpu")


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
    check_recurrence_inputs(U, x, weight_c, bias, c0, mask_c, mask_pad)
    choice = implementation or os.environ.get("FAIRSEQ_SRUPP_RECURRENCE", "auto")
    if choice not in IMPLEMENTATIONS:
        raise ValueError(
            "unknown recurrence implementation {!r}; choose one of {}".format(choice, IMPLEMENTATIONS)
        )
    if choice == "reference" or (choice == "auto" and U.is_cuda):
        return elementwise_recurrence_ref(U, x, weight_c, bias, c0, mask_c, mask_pad)
    if U.is_cuda:
        raise ValueError("the 'cpu' recurrence implementation needs CPU tensors")
    return elementwise_recurrence_cpu(U, x, weight_c, bias, c0, mask_c, mask_pad)
