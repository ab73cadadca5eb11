"""Additive attention masks over [memory; current] positions (spec §3)."""
import torch
from torch import Tensor

# Added to attention scores of masked positions, as the paper's scripts do.
MASKED_SCORE = -10000.0


def causal_mask(length: int, mem_len: int = 0, device=None, dtype=torch.float32) -> Tensor:
    """Additive (L, M+L) training mask: query t sees all M memory positions and current positions <= t."""
    ones = torch.ones(length, mem_len + length, device=device, dtype=dtype)
    return torch.triu(ones, diagonal=1 + mem_len) * MASKED_SCORE


def same_length_mask(length: int, mem_len: int, window: int, device=None, dtype=torch.float32) -> Tensor:
    """Additive (L, M+L) evaluation mask: the query at absolute position p = M+t sees positions
    p-window … p, i.e. itself and the ``window`` positions before it, whatever t is. This is the
    paper's ``triu(diagonal=1) + tril(diagonal=-1-window)`` mask, which spans window+1 positions."""
    rows = torch.arange(length, device=device).unsqueeze(1) + mem_len
    cols = torch.arange(mem_len + length, device=device).unsqueeze(0)
    visible = (cols <= rows) & (cols >= rows - window)
    return (~visible).to(dtype) * MASKED_SCORE
