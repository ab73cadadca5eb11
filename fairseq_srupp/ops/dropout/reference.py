"""Pure-PyTorch reference of the fused CPU dropout (``dropout_cpu.cpp``): the same Philox4x32-10
words and the same keep rule, computed with int64 tensor arithmetic. Slow; for tests.

Element i of a tensor (in contiguous order) takes 16-bit uniform ``i % 8`` of Philox4x32-10 at
counter ``(i // 8, 0, 0, 0)`` under the 64-bit key ``seed`` (the low half of word ``(i % 8) // 2``
for even i, the high half for odd i) and is kept iff that is ``>= threshold(p)``.
"""
import math

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF
_MUL = (0xD2511F53, 0xCD9E8D57)
_WEYL = (0x9E3779B9, 0xBB67AE85)
ROUNDS = 10


def threshold(p: float) -> int:
    """16-bit uniforms below this are dropped: P(drop) = threshold / 2^16, within 2^-17 of p."""
    return min(int(round(p * 2.0 ** 16)), 2 ** 16 - 1)


def keep_scale(p: float) -> float:
    """1 / P(keep) for the resolved probability, so the expected output equals the input."""
    return 1.0 / (1.0 - threshold(p) / 2.0 ** 16)


def _mulhilo(a: int, b: Tensor):
    # a * b < 2^64 wraps in int64 arithmetic; the low 64 bits (all we take) are still exact.
    product = b * a
    return (product >> 32) & _MASK32, product & _MASK32


def philox_words(first: int, n_counters: int, seed: int) -> Tensor:
    """(n_counters, 4) int64 words in [0, 2^32) of counters first .. first + n_counters - 1."""
    counter = torch.arange(first, first + n_counters, dtype=torch.int64)
    x0, x1 = counter & _MASK32, (counter >> 32) & _MASK32
    x2, x3 = torch.zeros_like(counter), torch.zeros_like(counter)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(ROUNDS):
        hi0, lo0 = _mulhilo(_MUL[0], x0)
        hi1, lo1 = _mulhilo(_MUL[1], x2)
        x0, x1, x2, x3 = hi1 ^ x1 ^ k0, lo1, hi0 ^ x3 ^ k1, lo0
        k0, k1 = (k0 + _WEYL[0]) & _MASK32, (k1 + _WEYL[1]) & _MASK32
    return torch.stack([x0, x1, x2, x3], dim=1)


def keep_mask(shape, p: float, seed: int) -> Tensor:
    """Bool mask of ``shape``: True where the element is kept."""
    numel = math.prod(shape)
    words = philox_words(0, (numel + 7) // 8, seed)
    uniforms = torch.stack([words & 0xFFFF, words >> 16], dim=-1).reshape(-1)[:numel]
    return (uniforms >= threshold(p)).reshape(shape)


def dropout_ref(input: Tensor, p: float, seed: int) -> Tensor:
    """input * keep * keep_scale(p), differentiable by autograd; 16-bit inputs are scaled in fp32
    and rounded once, as the C++ path does."""
    compute = torch.float64 if input.dtype == torch.float64 else torch.float32
    kept = keep_mask(input.shape, p, seed).to(compute) * keep_scale(p)
    return (input.to(compute) * kept).to(input.dtype)
