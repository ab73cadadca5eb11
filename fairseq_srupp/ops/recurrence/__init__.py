"""The SRU++ elementwise recurrence (spec §1.4) and the dispatch between its implementations.

``elementwise_recurrence`` validates its inputs, applies the dtype rule and picks an implementation:

* ``reference``: :func:`elementwise_recurrence_ref`, a pure-PyTorch time loop (autograd).
* ``cpu``: the custom op ``torch.ops.fairseq_srupp.elementwise_recurrence`` (``op.py``) on CPU
  tensors, i.e. a fused C++ loop with a hand-written backward.
* ``cuda``: the same custom op on CUDA tensors, i.e. fused CUDA kernels compiled by NVRTC via CuPy.

Automatic choice (:func:`choose_implementation`): CUDA tensors take the CUDA kernel when CuPy is
installed, else the reference with a one-time warning saying how to install CuPy; CPU (and meta)
tensors take the fused C++ path. The environment variable ``FAIRSEQ_SRUPP_RECURRENCE`` (``auto`` |
``reference`` | ``cpu`` | ``cuda``) forces a choice, e.g. for debugging.

dtype rule, applied here and nowhere else, so all three implementations agree: arithmetic runs in
fp64 if any floating input is fp64, else in fp32 (fp16 / bf16 are storage formats only). h comes
back in the promoted dtype of U and x (U's alone when k=4; fp64 when the arithmetic is), the last
cell state in c0's dtype. So fp16 U with an fp32 residual x (autocast) gives fp32 h, and a carried
fp32 state stays fp32 whatever the activations are stored in.

Storage of U: the fused paths (``cpu``, ``cuda``) get U as it is when it is fp16 / bf16 and h is
fp32 (:func:`keeps_u_dtype`): the CUDA kernels read it so, with no fp32 copy of U (read 2 bytes,
write 4, read 4 again per element, and the same for grad_U), and return grad_U in U's dtype. The
C++ CPU path still widens such a U to fp32 itself (``op.WidenedU``), and the reference gets U in
h's dtype.
"""
import contextlib
import os
import warnings
from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor

from .cupy_kernel import KERNEL_DTYPES, cupy_available
from .op import recurrence_op
from .reference import elementwise_recurrence_ref

__all__ = [
    "forced_implementation",
    "elementwise_recurrence",
    "elementwise_recurrence_cpu",
    "elementwise_recurrence_cuda",
    "elementwise_recurrence_ref",
    "check_recurrence_inputs",
    "choose_implementation",
    "keeps_u_dtype",
    "recurrence_dtypes",
]

IMPLEMENTATIONS = ("auto", "reference", "cpu", "cuda")
NO_CUPY_WARNING = (
    "CuPy is not installed, so the SRU++ recurrence runs as a slow PyTorch loop on the GPU. "
    "Install the fused CUDA kernel with `pip install -e .[cuda12]` (or `[cuda13]`)."
)
_warned_no_cupy = False


_forced: Optional[str] = None  # set by forced_implementation


@contextlib.contextmanager
def forced_implementation(choice: Optional[str]) -> Iterator[None]:
    """Within the block, calls without an ``implementation`` run ``choice`` (as ``FAIRSEQ_SRUPP_RECURRENCE``
    would; None: no change), whatever the environment says. For instance a CUDA graph captured without
    CuPy's launches. Process-wide, not per thread."""
    global _forced
    previous = _forced
    _forced = choice if choice is not None else previous
    try:
        yield
    finally:
        _forced = previous


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
    """Raise ``ValueError`` naming the expected and actual shape of any bad input (``TypeError`` for a
    non-floating one); return k."""
    named = (("U", U), ("x", x), ("weight_c", weight_c), ("bias", bias), ("c0", c0), ("mask_c", mask_c))
    for name, t in named:
        # integers would be computed in fp32 and truncated back; complex numbers lose their imaginary part
        if t is not None and not t.dtype.is_floating_point:
            raise TypeError("{} must be a floating-point tensor (fp16, bf16, fp32 or fp64), got {}".format(name, t.dtype))
    if U.dim() != 3:
        raise ValueError("U must be (L, B, d*k), got shape {}".format(tuple(U.shape)))
    length, batch = U.shape[0], U.shape[1]
    if c0.dim() != 2 or c0.shape[0] != batch:
        raise ValueError("c0 must be (B={}, d), got {}".format(batch, tuple(c0.shape)))
    d = c0.shape[1]
    if length == 0 or batch == 0 or d == 0:
        raise ValueError("the recurrence needs L, B and d >= 1, got U {} and c0 {}".format(
            tuple(U.shape), tuple(c0.shape)))
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


def recurrence_dtypes(U: Tensor, x: Optional[Tensor], weight_c: Tensor, bias: Tensor, c0: Tensor):
    """(storage dtype of U, x and h; compute dtype of the arithmetic and of weight_c, bias, c0,
    mask_c inside the implementations), by the module's dtype rule."""
    storage = U.dtype if x is None else torch.promote_types(U.dtype, x.dtype)
    floats = (storage, weight_c.dtype, bias.dtype, c0.dtype)
    compute = torch.float64 if torch.float64 in floats else torch.float32
    return (compute if compute == torch.float64 else storage), compute


def keeps_u_dtype(u_dtype: torch.dtype, storage: torch.dtype) -> bool:
    """Whether the fused op gets U in ``u_dtype`` when h is stored in ``storage`` (else in ``storage``)."""
    return u_dtype == storage or (storage == torch.float32 and u_dtype in (torch.float16, torch.bfloat16))


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
    """Run the recurrence with the best available implementation (or ``implementation``).

    Shapes as in :func:`elementwise_recurrence_ref`: U (L, B, k*d), x (L, B, d) or None when k=4,
    weight_c and bias (2d,), c0 (B, d), mask_c (B, d), mask_pad (L, B) bool. Returns
    h (L, B, d) and the last cell state (B, d), with dtypes by the rule in the module docstring.
    """
    global _warned_no_cupy
    k = check_recurrence_inputs(U, x, weight_c, bias, c0, mask_c, mask_pad)
    x = x if k == 3 else None  # the skip is U[..., 3] when k=4
    storage, compute = recurrence_dtypes(U, x, weight_c, bias, c0)
    choice = implementation or _forced or os.environ.get("FAIRSEQ_SRUPP_RECURRENCE", "auto")
    chosen, warning = choose_implementation(choice, U.is_cuda, storage, U.is_cuda and cupy_available())
    if warning is not None and not _warned_no_cupy:
        warnings.warn(warning)
        _warned_no_cupy = True

    def to(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
        if t is None:
            return None
        return (t if t.dtype == dtype else t.to(dtype)).contiguous()  # no no-op casts in traced graphs

    u_dtype = U.dtype if chosen != "reference" and keeps_u_dtype(U.dtype, storage) else storage
    args = (
        to(U, u_dtype), to(x, storage), to(weight_c, compute), to(bias, compute), to(c0, compute),
        to(mask_c, compute), to(mask_pad, torch.bool),
    )
    if chosen == "reference":
        h, c_last = elementwise_recurrence_ref(*args)
    else:
        h, c_last, _ = recurrence_op(*args)
    return h, c_last.to(c0.dtype)


def elementwise_recurrence_cpu(U, x, weight_c, bias, c0, mask_c=None, mask_pad=None) -> Tuple[Tensor, Tensor]:
    """The fused C++ path for CPU tensors; same contract as :func:`elementwise_recurrence`."""
    return elementwise_recurrence(U, x, weight_c, bias, c0, mask_c, mask_pad, implementation="cpu")


def elementwise_recurrence_cuda(U, x, weight_c, bias, c0, mask_c=None, mask_pad=None) -> Tuple[Tensor, Tensor]:
    """The CUDA kernel for CUDA tensors of float32, float16 or bfloat16; same contract as
    :func:`elementwise_recurrence`."""
    dtype = recurrence_dtypes(U, x if U.shape[-1] == 3 * c0.shape[-1] else None, weight_c, bias, c0)[0]
    if dtype not in KERNEL_DTYPES:
        raise TypeError("the CUDA recurrence takes float32, float16 or bfloat16, got {}".format(dtype))
    return elementwise_recurrence(U, x, weight_c, bias, c0, mask_c, mask_pad, implementation="cuda")
