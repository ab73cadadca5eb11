"""``torch.ops.fairseq_srupp.elementwise_recurrence``: the fused recurrence as a ``torch.library``
custom op, so ``torch.compile`` / ``torch.export`` see one opaque node instead of breaking the graph.

Two ops, each with a fake (meta) implementation for shape propagation and a CPU (fused C++,
``cpu.py``) and a CUDA (CuPy, ``cupy_kernel.py``) implementation:

* ``elementwise_recurrence(U, x?, weight_c, bias, c0, mask_c?, mask_pad?) -> (h, c_last, c_all)``
* ``elementwise_recurrence_backward(U, x?, weight_c, bias, c0, mask_c?, mask_pad?, c_all, grad_h,
  grad_c_last) -> (grad_U, grad_x, grad_weight_c, grad_bias, grad_c0)``

joined by ``register_autograd``. Contract (the dispatcher in ``__init__.py`` establishes it; the
ops do not convert): x (L, B, d, or None when k=4) contiguous in the storage dtype S of h (fp16,
bf16, fp32 or fp64; U's dtype when k=4); U (L, B, k*d) contiguous in S, or in fp16 / bf16 when S is
fp32 (autocast: a 16-bit linear output next to the fp32 residual stream, which the CUDA kernels read
as it is rather than through an fp32 copy); weight_c, bias (2d,), c0 (B, d), mask_c (B, d)
contiguous in the compute dtype C (fp64 when S is fp64, else fp32); mask_pad (L, B) bool
contiguous. h comes back in S, c_last (B, d) and c_all (L, B, d, every step's cell state, kept for
the backward and not differentiable) in C; grad_U in U's dtype, grad_x in x's. grad_x is an empty
tensor when k=4 (an op cannot return None).
"""
import torch
from torch import Tensor

from . import cpu
from .cupy_kernel import CUPY_KERNELS


class WidenedU:
    """``kernels`` that take U in x's dtype only (the C++ CPU loop), behind the op's contract: a
    16-bit U next to an fp32 x is widened here, a copy, and grad_U narrowed back to U's dtype."""

    def __init__(self, kernels):
        self.kernels = kernels

    def forward(self, U, x, *rest):
        return self.kernels.forward(_like_x(U, x), x, *rest)

    def backward(self, U, x, *rest):
        grad_U, *others = self.kernels.backward(_like_x(U, x), x, *rest)
        return (grad_U.to(U.dtype), *others)


def _like_x(U: Tensor, x) -> Tensor:
    return U if x is None or U.dtype == x.dtype else U.to(x.dtype)


# Implementations per device type, looked up at call time so a test can put the CUDA source
# compiled for the host in the CPU slot and drive it through this very op and its autograd.
KERNELS = {"cpu": WidenedU(cpu), "cuda": CUPY_KERNELS}


def _no_kernel(U: Tensor, *_) -> None:
    raise NotImplementedError(
        "the fused SRU++ recurrence has no {} implementation; set FAIRSEQ_SRUPP_RECURRENCE=reference".format(
            U.device.type
        )
    )


# Explicit schemas: the two ops share their first seven arguments.
_INPUTS = "Tensor U, Tensor? x, Tensor weight_c, Tensor bias, Tensor c0, Tensor? mask_c, Tensor? mask_pad"
recurrence_op = torch.library.custom_op(
    "fairseq_srupp::elementwise_recurrence", _no_kernel, mutates_args=(),
    schema="({}) -> (Tensor, Tensor, Tensor)".format(_INPUTS),
)
recurrence_backward_op = torch.library.custom_op(
    "fairseq_srupp::elementwise_recurrence_backward", _no_kernel, mutates_args=(),
    schema="({}, Tensor c_all, Tensor grad_h, Tensor grad_c_last) -> (Tensor, Tensor, Tensor, Tensor, Tensor)".format(
        _INPUTS
    ),
)


@recurrence_op.register_fake
def _(U, x, weight_c, bias, c0, mask_c, mask_pad):
    L, B, d = U.shape[0], U.shape[1], c0.shape[1]
    h = U.new_empty(L, B, d, dtype=U.dtype if x is None else x.dtype)
    return h, c0.new_empty(B, d), c0.new_empty(L, B, d)


@recurrence_backward_op.register_fake
def _(U, x, weight_c, bias, c0, mask_c, mask_pad, c_all, grad_h, grad_c_last):
    grad_x = torch.empty_like(x) if x is not None else U.new_empty(0)
    return torch.empty_like(U), grad_x, torch.empty_like(weight_c), torch.empty_like(bias), torch.empty_like(c0)


def _setup_context(ctx, inputs, output):
    U, x, weight_c, bias, c0, mask_c, mask_pad = inputs
    ctx.has_x = x is not None
    ctx.save_for_backward(U, x, weight_c, bias, c0, mask_c, mask_pad, output[2])
    ctx.mark_non_differentiable(output[2])


def _backward(ctx, grad_h, grad_c_last, _grad_c_all):
    U, x, weight_c, bias, c0, mask_c, mask_pad, c_all = ctx.saved_tensors
    grad_U, grad_x, grad_wc, grad_bias, grad_c0 = recurrence_backward_op(
        U, x, weight_c, bias, c0, mask_c, mask_pad, c_all, grad_h.contiguous(), grad_c_last.contiguous()
    )
    return grad_U, grad_x if ctx.has_x else None, grad_wc, grad_bias, grad_c0, None, None


recurrence_op.register_autograd(_backward, setup_context=_setup_context)


def _contiguous(*tensors):
    return tuple(None if t is None else t.contiguous() for t in tensors)


def _register_device(device_type: str) -> None:
    # The kernels index raw pointers, so layouts are fixed here, on the real tensors: inside a
    # torch.compile'd graph a .contiguous() in _backward is traced on fake tensors and dropped
    # when their (predicted) strides look contiguous, yet the runtime gradient can be strided
    # (e.g. coming out of dropout's backward), which gave wrong gradients.
    def forward(U, x, weight_c, bias, c0, mask_c, mask_pad):
        return KERNELS[device_type].forward(*_contiguous(U, x, weight_c, bias, c0, mask_c, mask_pad))

    def backward(U, x, weight_c, bias, c0, mask_c, mask_pad, c_all, grad_h, grad_c_last):
        return KERNELS[device_type].backward(
            *_contiguous(U, x, weight_c, bias, c0, mask_c, mask_pad, c_all, grad_h, grad_c_last)
        )

    recurrence_op.register_kernel(device_type)(forward)
    recurrence_backward_op.register_kernel(device_type)(backward)


_register_device("cpu")
_register_device("cuda")
