"""The two transforms that compute an SRU++ layer's U (spec §1.2).

Both take the layer's (normalised) input x̃ (L, B, d_in) and return U (L, B, k*d). Parameter
names follow ``sru.SRUpp`` (``linear1``, ``linear2``, ``linear3``, ``alpha``, ``layer_norm``)
so its state dicts and the paper's released checkpoints load without renaming.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairseq_srupp.ops.dropout import fused_dropout, fused_dropout_enabled

from .attention_masks import AttentionMask, additive_mask, attention_mode, is_structured, mask_for_sdpa, mask_shape
from .dropout import Dropout


def linear_without_bias(in_features: int, out_features: int) -> nn.Linear:
    """``nn.Linear(bias=False)`` with no ``bias`` entry among its parameters (initialised by the owner's
    reset_parameters, xavier-uniform).

    ``nn.Linear`` keeps a None there, and fairseq's trainer, which catalogues parameters by identity,
    takes every such None for one parameter shared by all these layers and logs a "detected shared
    parameter" line for each. State dicts are the same either way.
    """
    linear = nn.Linear(in_features, out_features, bias=False)
    del linear._parameters["bias"]
    linear.bias = None  # a plain attribute: forward passes it to F.linear
    return linear


def attention_bias(
    attn_mask: Optional[AttentionMask],
    key_padding: Optional[Tensor],
    tgt_len: int,
    src_len: int,
    dtype: torch.dtype,
    device: Optional[torch.device] = None,
) -> Optional[AttentionMask]:
    """Combine an (tgt, src) mask and a (src, B) key padding mask into what SDPA gets.

    ``attn_mask``: an additive float tensor or a causal structure (``CausalBias``, see
    :mod:`~fairseq_srupp.modules.attention_masks`); ``device``: where attention runs (decides
    whether the structure is kept, see ``mask_for_sdpa``; default: the key padding's, else CPU).
    Returns None, the structure itself (no key padding, a device that takes it), a (tgt, src)
    tensor, or a (B, 1, tgt, src) tensor to add to attention scores.
    Padded keys get the dtype's lowest finite value (not -inf) so a query that sees only padding
    yields a finite uniform distribution instead of NaN.
    """
    if attn_mask is not None and tuple(mask_shape(attn_mask)) != (tgt_len, src_len):
        raise ValueError(
            "attn_mask has size {} but expect {}".format(list(mask_shape(attn_mask)), [tgt_len, src_len])
        )
    if device is None and key_padding is not None:
        device = key_padding.device
    bias = mask_for_sdpa(attn_mask, device, dtype, key_padding=key_padding is not None)
    if is_structured(bias):
        return bias
    if bias is not None:
        bias = bias.to(dtype)
    if key_padding is not None:
        if key_padding.shape[0] != src_len:
            raise ValueError(
                "key padding mask covers {} positions but attention sees {}".format(
                    key_padding.shape[0], src_len
                )
            )
        base = bias if bias is not None else key_padding.new_zeros((tgt_len, src_len), dtype=dtype)
        pad = key_padding.t().bool().view(-1, 1, 1, src_len)  # (B, 1, 1, src)
        bias = base.view(1, 1, tgt_len, src_len).masked_fill(pad, torch.finfo(dtype).min)
    return bias


# Widest head the memory-efficient SDPA kernel has a tuned template for: wider heads (the paper's
# single 768- or 1024-wide head) fall to its generic template. At the enwik8-base shape on an H100 its
# backward took 33.6 ms of a 69.7 ms bf16 training step; with the product of scores below the step
# took 42.1 ms (benchmarks/results/2026-11-27-h100). Flash takes heads up to 256 but not a
# lower-right causal mask.
SDPA_MAX_HEAD_DIM = 128


def attention_scores(q: Tensor, k: Tensor, bias: Optional[Tensor]) -> Tensor:
    """q·kᵀ/√hd + bias, (B, H, L, S), for q (B, H, L, hd), k (B, H, S, hd) and an additive bias
    broadcastable to (B, H, L, S) or None.

    One batched product (``baddbmm``) applies the scale and adds the bias in its epilogue, where the bias
    can be viewed per (batch, head) without a copy; otherwise a product, then a scaling and an addition,
    each a pass over the scores."""
    B, H, L, hd = q.shape
    S = k.shape[-2]
    scale = hd ** -0.5
    batched = q.new_empty(1, 1, 1) if bias is None else _bias_per_batch_and_head(bias, B, H)
    if batched is None:
        return torch.matmul(q, k.transpose(-2, -1)).mul_(scale).add_(bias)
    q3, k3 = q.reshape(B * H, L, hd), k.reshape(B * H, S, hd)
    # without a bias, beta=0: the input is ignored, only its shape matters
    return torch.baddbmm(batched, q3, k3.transpose(1, 2), beta=0.0 if bias is None else 1.0,
                         alpha=scale).view(B, H, L, S)


def _bias_per_batch_and_head(bias: Tensor, B: int, H: int) -> Optional[Tensor]:
    """``bias`` (broadcastable to (B, H, L, S)) as a 3-d tensor broadcastable to (B·H, L, S), or None when
    its batch and head dimensions do not merge into one (a (B, 1, L, S) bias with several heads)."""
    lead = (1,) * (4 - bias.dim()) + tuple(bias.shape[:-2])  # its (batch, head) sizes, 1 where broadcast
    if lead[0] * lead[1] != 1 and lead != (B, H) and B != 1 and H != 1:
        return None
    return bias.reshape(lead[0] * lead[1], *bias.shape[-2:])


def attention_by_matmul(
    q: Tensor, k: Tensor, v: Tensor, bias: Optional[AttentionMask], dropout_p: float, seed: Optional[int] = None
) -> Tensor:
    """softmax(q·kᵀ/√hd + bias) with dropout, times v, with the (B, H, L, S) scores materialised:
    q (B, H, L, hd), k / v (B, H, S, hd), bias an additive tensor broadcastable to (B, H, L, S) or a
    causal structure → (B, H, L, hd).

    What ``F.scaled_dot_product_attention`` computes. The softmax computes in fp32 and stores its
    probabilities in the scores' dtype, 16-bit under autocast and fairseq's --fp16 / --bf16 alike
    (they feed a 16-bit product with v either way). On the CPU the probabilities' mask is drawn by
    :func:`~fairseq_srupp.ops.dropout.fused_dropout` (``seed`` fixes it), elsewhere by ``F.dropout``.
    """
    if is_structured(bias):
        bias = additive_mask(bias, q.device, q.dtype)
    scores = attention_scores(q, k, bias)
    # The scores' own dtype, named: autocast then leaves the softmax alone instead of writing fp32
    # probabilities (and keeping them for backward) that the product with v reads back as 16-bit.
    # The kernels compute a 16-bit softmax in fp32 and round only what they store.
    probs = torch.softmax(scores, dim=-1, dtype=scores.dtype).to(v.dtype)
    if dropout_p > 0:
        if fused_dropout_enabled(probs):
            probs = fused_dropout(probs, dropout_p, seed)
        else:
            probs = F.dropout(probs, dropout_p, training=True)
    return torch.matmul(probs, v)


def wants_matmul_attention(q: Tensor, dropout_p: float) -> bool:
    """Whether :func:`attention_by_matmul` beats SDPA for queries ``q`` (B, H, L, hd): on CUDA for heads
    wider than :data:`SDPA_MAX_HEAD_DIM` (``FAIRSEQ_SRUPP_ATTENTION=sdpa`` keeps SDPA there), on the
    CPU when dropout is on (SDPA has no fused CPU kernel with dropout and runs the same steps)."""
    if q.is_cuda:
        return q.shape[-1] > SDPA_MAX_HEAD_DIM and attention_mode() == "auto"
    return dropout_p > 0 and fused_dropout_enabled(q)


class SRUppAttention(nn.Module):
    """Single-projection attention transform of an SRU++ layer.

    z = W1·[memory; x̃] (d_in → p); q = z at current positions; k, v = split(W2·z) (p → 2p);
    o = α·softmax(q·kᵀ/√(p/heads) + mask)·v + z_current; o = LN(o); U = W3·dropout(o) (p → out).

    The layer norm sits after the residual (post-norm), as in the paper and in every ``sru.SRUpp``
    layer (``sru.SRUppAttention``'s pre-norm option is not reachable from ``sru.SRUpp`` and is
    not offered here).

    Args:
        in_features: d_in, width of the layer input (and of its memory).
        out_features: k*d, width of U.
        proj_features: p, the attention width; must be divisible by ``num_heads``.
        num_heads: attention heads splitting p.
        dropout: dropout before W3 (W3 is scaled by √(1−dropout) at init).
        attn_dropout: dropout on the attention probabilities.
        rezero_init_alpha: initial α (ReZero; 0 in the paper).
        layer_norm: apply LayerNorm(p) to the residual sum o.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        proj_features: int,
        num_heads: int = 1,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        rezero_init_alpha: float = 0.0,
        layer_norm: bool = True,
    ):
        super().__init__()
        if proj_features % num_heads != 0:
            raise ValueError(
                "proj_features ({}) must be divisible by num_heads ({})".format(proj_features, num_heads)
            )
        self.in_features = in_features
        self.out_features = out_features
        self.proj_features = proj_features
        self.num_heads = num_heads
        self.rezero_init_alpha = float(rezero_init_alpha)
        self.dropout = Dropout(dropout, module_name=type(self).__name__)
        # Applied by scaled_dot_product_attention; the module only carries p and the
        # train / retained-at-inference switch.
        self.attn_dropout_module = Dropout(attn_dropout, module_name=type(self).__name__)
        self.linear1 = linear_without_bias(in_features, proj_features)
        self.linear2 = linear_without_bias(proj_features, 2 * proj_features)
        self.linear3 = linear_without_bias(proj_features, out_features)
        self.alpha = nn.Parameter(torch.full((1,), self.rezero_init_alpha))
        self.layer_norm = nn.LayerNorm(proj_features) if layer_norm else None
        self.reset_parameters()

    @property
    def attn_dropout(self) -> float:
        """Dropout probability on the attention weights (as ``sru.SRUppAttention.attn_dropout``)."""
        return self.attn_dropout_module.p

    def reset_parameters(self):
        for layer in (self.linear1, self.linear2, self.linear3):
            nn.init.xavier_uniform_(layer.weight)
        with torch.no_grad():
            self.linear3.weight.mul_((1 - self.dropout.p) ** 0.5)
            self.alpha.fill_(self.rezero_init_alpha)
        if self.layer_norm is not None:
            self.layer_norm.reset_parameters()

    def forward(
        self,
        input: Tensor,
        mask_pad: Optional[Tensor] = None,
        attn_mask: Optional[AttentionMask] = None,
        memory: Optional[Tensor] = None,
        memory_mask_pad: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
            input: (L, B, d_in) normalised layer input.
            mask_pad: optional (L, B) bool, True at padding (masked as keys).
            attn_mask: optional additive (L, M+L) float mask, or the causal structure
                ``causal_lower_right(L, M+L)`` (see :mod:`~fairseq_srupp.modules.attention_masks`).
            memory: optional (M, B, d_in) previous-segment layer inputs.
            memory_mask_pad: optional (M, B) bool padding of the memory.
        Returns:
            U: (L, B, out_features).
        """
        tgt_len, bsz, in_dim = input.shape
        mem_len = 0
        if memory is not None:
            if memory.dim() != 3 or tuple(memory.shape[1:]) != (bsz, in_dim):
                raise ValueError(
                    "memory has size {} but expect {}".format(list(memory.shape), ["*", bsz, in_dim])
                )
            mem_len = memory.shape[0]
        src_len = mem_len + tgt_len

        residual = z = self.linear1(input)  # (L, B, p)
        if memory is not None:
            # W1·[mem; x̃] as two products: the (detached) memory then gets no input gradient, which a
            # product over the joined inputs computes and drops, and p-wide results are cheaper to
            # join than d_in-wide inputs.
            z = torch.cat([self.linear1(memory.to(input.dtype)), z], dim=0)  # (M+L, B, p)

        q = self._split_heads(residual)  # (B, H, L, hd)
        k, v = (self._split_heads(t) for t in self.linear2(z).chunk(2, dim=-1))  # (B, H, M+L, hd)

        key_padding = None
        if mask_pad is not None or memory_mask_pad is not None:
            cur = mask_pad if mask_pad is not None else input.new_zeros(tgt_len, bsz, dtype=torch.bool)
            if mem_len > 0:
                mem = (
                    memory_mask_pad
                    if memory_mask_pad is not None
                    else input.new_zeros(mem_len, bsz, dtype=torch.bool)
                )
                cur = torch.cat([mem.bool(), cur.bool()], dim=0)
            key_padding = cur  # (M+L, B)
        bias = attention_bias(attn_mask, key_padding, tgt_len, src_len, q.dtype, device=q.device)
        return self._attend_and_project(q, k, v, bias, residual)

    def forward_incremental(self, input: Tensor, cache) -> Tensor:
        """Attention of new positions over the cached earlier ones and themselves (generation).

        Args:
            input: (L, B, d_in) normalised layer input of the new positions.
            cache: this layer's handle on a
                :class:`~fairseq_srupp.modules.decoding_cache.DecodingCache`: ``cache.attend(k, v)``
                stores the new keys/values and returns what the queries attend to, with its mask.
        Returns:
            U: (L, B, out_features), equal to :meth:`forward` over the whole sequence with the
            same-length mask of the cache's window (keys depend only on their own position).
        """
        z = self.linear1(input)  # (L, B, p)
        residual = z
        q = self._split_heads(z)  # (B, H, L, hd)
        k, v = (self._split_heads(t) for t in self.linear2(z).chunk(2, dim=-1))  # (B, H, L, hd)
        k, v, bias = cache.attend(k, v)  # (B, H, S, hd): cached and new positions
        return self._attend_and_project(q, k, v, bias, residual)

    def _split_heads(self, x: Tensor) -> Tensor:
        """(S, B, p) → (B, H, S, hd)."""
        length, bsz, _ = x.shape
        heads = self.num_heads
        return x.reshape(length, bsz, heads, self.proj_features // heads).permute(1, 2, 0, 3)

    def _attend_and_project(self, q: Tensor, k: Tensor, v: Tensor, bias: Optional[AttentionMask], residual: Tensor):
        """q (B, H, L, hd), k/v (B, H, S, hd), residual z (L, B, p) → U (L, B, out_features).

        ``bias``: from :func:`attention_bias`; a ``CausalBias`` reaches here only on CUDA, where SDPA
        dispatches it to flash / memory-efficient attention (lower-right causal, or ``is_causal`` when
        S = L), never as a tensor; for heads wider than SDPA_MAX_HEAD_DIM the score product adds its
        tensor instead (:func:`wants_matmul_attention`)."""
        bsz, _, tgt_len, _ = q.shape
        dropout_p = self.attn_dropout if self.attn_dropout_module.active else 0.0
        if wants_matmul_attention(q, dropout_p):
            attn = attention_by_matmul(q, k, v, bias, dropout_p)
        else:
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)  # (B, H, L, hd)
        attn = attn.permute(2, 0, 1, 3).reshape(tgt_len, bsz, self.proj_features)  # (L, B, p)
        out = attn * self.alpha + residual
        if self.layer_norm is not None:
            out = self.layer_norm(out)
        return self.linear3(self.dropout(out))  # (L, B, k*d)

    def extra_repr(self) -> str:
        return "heads={}, attn_dropout={}".format(self.num_heads, self.attn_dropout)


class SRUppProjectedLinear(nn.Module):
    """Projection-only transform of an SRU++ layer without attention: U = W2·dropout(LN(W1·x̃)).

    Args mirror :class:`SRUppAttention` (in_features → proj_features → out_features).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        proj_features: int,
        dropout: float = 0.0,
        layer_norm: bool = True,
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.proj_features = proj_features
        self.dropout = Dropout(dropout, module_name=type(self).__name__)
        self.linear1 = linear_without_bias(in_features, proj_features)
        self.linear2 = linear_without_bias(proj_features, out_features)
        self.layer_norm = nn.LayerNorm(proj_features) if layer_norm else None
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.xavier_uniform_(self.linear1.weight)
        nn.init.xavier_uniform_(self.linear2.weight)
        with torch.no_grad():
            self.linear2.weight.mul_((1 - self.dropout.p) ** 0.5)
        if self.layer_norm is not None:
            self.layer_norm.reset_parameters()

    def forward(
        self,
        input: Tensor,
        mask_pad: Optional[Tensor] = None,
        attn_mask: Optional[Tensor] = None,
        memory: Optional[Tensor] = None,
        memory_mask_pad: Optional[Tensor] = None,
    ) -> Tensor:
        """input (L, B, d_in) → U (L, B, out_features); the mask and memory arguments are unused."""
        z = self.linear1(input)  # (L, B, p)
        if self.layer_norm is not None:
            z = self.layer_norm(z)
        return self.linear2(self.dropout(z))
