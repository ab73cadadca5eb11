"""Dropout, with a fused CPU path.

PyTorch's CPU dropout draws its mask with ``bernoulli_`` (about 4.5 ns per element on this
project's CPU machine, a quarter of a small SRU++ LM's training step), then multiplies in a second
pass and keeps the mask for the backward. The fused path draws a counter-based Philox4x32-10 mask
inside the multiply (``dropout_cpu.cpp``, about 0.6 ns per element) and regenerates it in the
backward from the 64-bit seed it took from PyTorch's generator, so nothing is stored and seeded
runs are reproducible (``torch.manual_seed`` and fairseq's checkpointed RNG state cover it).

Choice (:func:`dropout`): CPU tensors in eager mode take the fused path; CUDA tensors (whose
PyTorch dropout is already one fused kernel) and code being traced by ``torch.compile`` take
``F.dropout``. ``FAIRSEQ_SRUPP_DROPOUT=torch`` forces ``F.dropout`` everywhere, e.g. to draw
exactly the masks ``torch.nn.Dropout`` (and so ``sru.SRUpp``) draws under the same seed.
"""
import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import env_choice
from .reference import dropout_ref, keep_mask, keep_scale, philox_words, threshold

__all__ = ["dropout", "fused_dropout", "fused_dropout_enabled", "dropout_ref", "keep_mask", "keep_scale", "philox_words", "threshold"]

DROPOUT_ENV = "FAIRSEQ_SRUPP_DROPOUT"
CHOICES = ("auto", "torch")


def fused_dropout_enabled(input: Tensor) -> bool:
    """Whether :func:`dropout` takes the fused path for ``input``."""
    return (env_choice(DROPOUT_ENV, CHOICES) == "auto" and input.device.type == "cpu"
            and not torch.compiler.is_compiling())


class _FusedDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input: Tensor, threshold: int, scale: float, seed: int) -> Tensor:
        from .cpu import load_dropout_extension

        ctx.mask_args = (seed, threshold, scale)
        return load_dropout_extension().dropout_apply(input, seed, threshold, scale)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        from .cpu import load_dropout_extension

        grad_input = load_dropout_extension().dropout_apply(grad_output, *ctx.mask_args)  # any layout
        return grad_input, None, None, None


def fused_dropout(input: Tensor, p: float, seed: int = None) -> Tensor:
    """input (CPU, any shape) → input * keep * keep_scale(p), the mask drawn from ``seed`` (by
    default a fresh 63-bit seed from PyTorch's default CPU generator); p is resolved to 1/65536."""
    if not 0.0 <= p < 1.0:
        raise ValueError("dropout probability must be in [0, 1), got {}".format(p))
    if seed is None:
        seed = int(torch.randint(0, 2 ** 63 - 1, (), dtype=torch.int64))
    return _FusedDropout.apply(input, threshold(p), keep_scale(p), seed)


def dropout(input: Tensor, p: float, training: bool = True) -> Tensor:
    """``F.dropout(input, p, training)``, fused on the CPU (see the module docstring)."""
    if not training or p == 0.0:
        return input
    if p == 1.0 or not fused_dropout_enabled(input):
        return F.dropout(input, p, training)
    return fused_dropout(input, p)
