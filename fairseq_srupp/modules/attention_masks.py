"""Attention masks over [memory; current] positions (spec §3).

A mask is either an additive (L, M+L) float tensor (−10000 on masked entries, as the paper's
scripts build it) or, for the training causal mask only, a structure: a lower-right
:class:`~torch.nn.attention.bias.CausalBias` of size (L, M+L), which tells
``F.scaled_dot_product_attention`` "query t sees all M memory positions and current positions <= t"
without a tensor, so CUDA can run the flash / memory-efficient kernels (a float mask rules flash out
and costs an L × (M+L) tensor per step). Where a structure cannot be used (CPU, key padding, the
``additive`` switch) :func:`mask_for_sdpa` turns it into exactly the tensor :func:`causal_mask` builds.

−10000 against exact exclusion (what the structure does): every query sees at least itself, so a
row's largest score is an unmasked one and each masked score sits about 10000 below it (raw scores
differ by far less); exp(−10000) underflows to exactly 0 in fp32 and in bf16 (fp32's exponent
range), so both give the same probabilities.

Switch: ``FAIRSEQ_SRUPP_ATTENTION`` = ``auto`` (default: the structure where it helps; on CUDA, heads
wider than ``transforms.SDPA_MAX_HEAD_DIM`` attend through the materialised scores) | ``sdpa`` (the
structure, and SDPA for every head width) | ``additive`` (always the float tensor through SDPA, the
path before the structure existed). ``sdpa`` and ``additive`` are for A/B measurements.
"""
import sys
from typing import TYPE_CHECKING, Optional, Union

import torch
from torch import Tensor

from fairseq_srupp.errors import env_choice

if TYPE_CHECKING:
    from torch.nn.attention.bias import CausalBias

# torch.nn.attention.bias is imported where a structure is made or read, not here: it loads
# torch._dynamo (0.7 s), which every fairseq command that loads the plugin would otherwise pay.
BIAS_MODULE = "torch.nn.attention.bias"

# Added to attention scores of masked positions, as the paper's scripts do.
MASKED_SCORE = -10000.0
ATTENTION_ENV = "FAIRSEQ_SRUPP_ATTENTION"
ATTENTION_MODES = ("auto", "sdpa", "additive")

AttentionMask = Union[Tensor, "CausalBias"]


def attention_mode() -> str:
    """The ``FAIRSEQ_SRUPP_ATTENTION`` switch: ``auto`` (default), ``sdpa`` or ``additive``."""
    return env_choice(ATTENTION_ENV, ATTENTION_MODES)


def causal_mask(length: int, mem_len: int = 0, device=None, dtype=torch.float32) -> Tensor:
    """Additive (L, M+L) training mask: query t sees all M memory positions and current positions <= t."""
    return _masked_above(length, mem_len + length, mem_len, device, dtype)


def _masked_above(tgt_len: int, src_len: int, offset: int, device, dtype) -> Tensor:
    """Additive (tgt, src) mask: query t sees keys <= t + offset."""
    ones = torch.ones(tgt_len, src_len, device=device, dtype=dtype)
    return torch.triu(ones, diagonal=1 + offset) * MASKED_SCORE


def training_causal_mask(length: int, mem_len: int = 0, device=None, dtype=torch.float32) -> AttentionMask:
    """The training causal mask as the model passes it: the (L, M+L) lower-right ``CausalBias`` where
    SDPA takes it (``auto`` on CUDA), else :func:`causal_mask`'s tensor. Inside ``torch.compile`` it is
    the tensor too: dynamo cannot construct a ``CausalBias`` (a tensor subclass) without a graph break."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if attention_mode() != "additive" and sdpa_takes_structure(device) and not torch.compiler.is_compiling():
        from torch.nn.attention.bias import causal_lower_right

        return causal_lower_right(length, mem_len + length)
    return causal_mask(length, mem_len, device=device, dtype=dtype)


def is_structured(mask: Optional[AttentionMask]) -> bool:
    bias = sys.modules.get(BIAS_MODULE)  # no structure exists before its module is imported
    return bias is not None and isinstance(mask, bias.CausalBias)


def mask_shape(mask: AttentionMask):
    """(tgt, src) of a tensor mask or a structure."""
    if is_structured(mask):
        return mask.seq_len_q, mask.seq_len_kv
    return tuple(mask.shape)


def sdpa_takes_structure(device: torch.device) -> bool:
    """Whether SDPA gets the structure itself on ``device``: CUDA only, where it picks the flash /
    memory-efficient kernels. On CPU the float mask keeps today's kernel choice and speed (tests
    replace this function to run the structured path on CPU)."""
    return device.type == "cuda"


def mask_for_sdpa(mask: Optional[AttentionMask], device, dtype: torch.dtype, key_padding: bool = False
               ) -> Optional[AttentionMask]:
    """``mask`` as SDPA should get it: the structure where it can be used (``auto``, a device that
    takes it, no key padding to combine it with), else its :func:`additive_mask`; tensors and None
    pass through. A boolean tensor is refused: True means "masked" to ``nn.MultiheadAttention`` and
    "attend" to SDPA, and added as 0 / 1 (what ``sru.SRUpp`` does with one) it masks nothing."""
    if not is_structured(mask):
        if mask is not None and not mask.dtype.is_floating_point:
            raise TypeError(
                "attn_mask must be an additive float mask ({:g} where a query must not look) or a causal "
                "structure, got a {} tensor; convert it, e.g. mask.float() * {:g} if True marks masked "
                "positions".format(MASKED_SCORE, mask.dtype, MASKED_SCORE))
        return mask
    device = torch.device(device) if device is not None else torch.device("cpu")
    if attention_mode() != "additive" and not key_padding and sdpa_takes_structure(device):
        return mask
    return additive_mask(mask, device, dtype)


def additive_mask(mask: "CausalBias", device, dtype: torch.dtype) -> Tensor:
    """The additive (L, S) tensor of a causal structure: a lower-right one is exactly
    :func:`causal_mask` (L, S−L), an upper-left one (query t sees keys <= t) its equivalent."""
    from torch.nn.attention.bias import CausalVariant

    tgt_len, src_len = mask.seq_len_q, mask.seq_len_kv
    offset = src_len - tgt_len if mask.variant == CausalVariant.LOWER_RIGHT else 0
    if offset < 0:
        raise ValueError("a lower-right causal mask needs at least as many keys ({}) as queries ({})".format(
            src_len, tgt_len))
    return _masked_above(tgt_len, src_len, offset, device, dtype)


def same_length_mask(length: int, mem_len: int, window: int, device=None, dtype=torch.float32) -> Tensor:
    """Additive (L, M+L) evaluation mask: the query at absolute position p = M+t sees positions
    p-window … p, i.e. itself and the ``window`` positions before it, whatever t is. This is the
    paper's ``triu(diagonal=1) + tril(diagonal=-1-window)`` mask, which spans window+1 positions."""
    rows = torch.arange(length, device=device).unsqueeze(1) + mem_len
    cols = torch.arange(mem_len + length, device=device).unsqueeze(0)
    visible = (cols <= rows) & (cols >= rows - window)
    return (~visible).to(dtype) * MASKED_SCORE
