"""One SRU++ layer: optional pre-norm, a transform producing U, the elementwise recurrence."""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from fairseq_srupp.ops.recurrence import elementwise_recurrence

from .attention_masks import AttentionMask
from .dropout import Dropout


class SRUppLayer(nn.Module):
    """A single SRU++ layer (spec §1).

    Args:
        input_size: d_in. When it differs from ``hidden_size`` the transform must produce
            k=4 blocks per unit (the skip term becomes a learned projection).
        hidden_size: d, width of h and c.
        transform_module: maps the (normalised) input (L, B, d_in) to U (L, B, k*d); an
            :class:`SRUppAttention` or :class:`SRUppProjectedLinear`.
        dropout: variational dropout on the gate r·(c − skip), one (B, d) mask per forward.
        layer_norm: apply LayerNorm to the input (pre-norm) or to h (``normalize_after``).
        normalize_after: post-norm instead of pre-norm.
        highway_bias: initial b_r (−2 in every preset).
        weight_c_init: v_f and v_r are initialised U(−weight_c_init, weight_c_init).
        rescale: multiply the k=3 skip term x by the buffer ``scale_x`` = √(1 + 2·exp(highway_bias))
            (``sru.SRUpp``'s ``rescale``; off in SRU++ and every preset). k=4 layers never rescale.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        transform_module: nn.Module,
        dropout: float = 0.0,
        layer_norm: bool = False,
        normalize_after: bool = False,
        highway_bias: float = -2.0,
        weight_c_init: float = 1.0,
        rescale: bool = False,
    ):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = hidden_size
        self.num_matrices = 3 if input_size == hidden_size else 4
        self.highway_bias = float(highway_bias)
        self.weight_c_init = float(weight_c_init)
        self.normalize_after = normalize_after
        self.rescale = rescale
        self.transform_module = transform_module
        # Holds p and the train / retained-at-inference switch of the variational mask on c.
        self.mask_dropout = Dropout(dropout, module_name=type(self).__name__)
        self.weight_c = nn.Parameter(torch.empty(2 * hidden_size))  # [v_f ; v_r]
        self.bias = nn.Parameter(torch.empty(2 * hidden_size))  # [b_f ; b_r]
        # Always present (1 unless rescale) so sru.SRUpp state dicts load strictly either way.
        self.register_buffer("scale_x", torch.ones(1))
        self.layer_norm = None
        if layer_norm:
            self.layer_norm = nn.LayerNorm(hidden_size if normalize_after else input_size)
        self.reset_parameters()

    @property
    def dropout(self) -> float:
        """Variational dropout probability on the gate r·(c − skip) (as ``sru.SRUCell.dropout``)."""
        return self.mask_dropout.p

    def reset_parameters(self):
        d = self.hidden_size
        with torch.no_grad():
            self.bias.zero_()
            self.bias[d:].fill_(self.highway_bias)
            self.weight_c.uniform_(-self.weight_c_init, self.weight_c_init)
            # The value sru.SRUCell computes (also for k=4 layers, where it stays unused).
            self.scale_x.fill_(math.sqrt(1 + 2 * math.exp(self.highway_bias)) if self.rescale else 1.0)
        self.transform_module.reset_parameters()
        if self.layer_norm is not None:
            self.layer_norm.reset_parameters()

    def forward(
        self,
        input: Tensor,
        c0: Optional[Tensor] = None,
        mask_pad: Optional[Tensor] = None,
        attn_mask: Optional[AttentionMask] = None,
        memory: Optional[Tensor] = None,
        memory_mask_pad: Optional[Tensor] = None,
        cache=None,
    ) -> Tuple[Tensor, Tensor]:
        """
        Args:
            input: (L, B, d_in) raw layer input (also the k=3 skip term).
            c0: optional (B, d) initial cell state (zeros when None).
            mask_pad: optional (L, B) bool, True at padding.
            attn_mask: optional additive (L, M+L) attention mask, or the causal structure
                ``causal_lower_right(L, M+L)`` (see :mod:`~fairseq_srupp.modules.attention_masks`).
            memory: optional (M, B, d_in) raw inputs of this layer from the previous segment.
            memory_mask_pad: optional (M, B) bool.
            cache: incremental decoding (instead of attn_mask / memory): this layer's handle on a
                :class:`~fairseq_srupp.modules.decoding_cache.DecodingCache` (see
                :meth:`SRUppAttention.forward_incremental`); layers without attention ignore it.
        Returns:
            h: (L, B, d) and the last cell state c: (B, d).
        """
        if input.dim() != 3:
            raise ValueError("input must be (L, B, d_in), got {}".format(tuple(input.shape)))
        batch = input.shape[1]
        if c0 is None:
            c0 = input.new_zeros(batch, self.hidden_size)
        residual = input
        if self.layer_norm is not None and not self.normalize_after:
            input = self.layer_norm(input)

        # Drawn before the transform's dropouts, as sru.SRUpp does, so seeded runs agree.
        mask_c = None
        if self.mask_dropout.active and self.dropout > 0:
            mask_c = self.bias.new_empty(batch, self.hidden_size).bernoulli_(1 - self.dropout)
            mask_c.div_(1 - self.dropout)

        if cache is not None and hasattr(self.transform_module, "forward_incremental"):
            if attn_mask is not None or memory is not None:
                raise ValueError("incremental decoding takes a cache instead of attn_mask / memory")
            U = self.transform_module.forward_incremental(input, cache)
        else:
            U = self.transform_module(
                input, mask_pad=mask_pad, attn_mask=attn_mask, memory=memory, memory_mask_pad=memory_mask_pad
            )  # (L, B, k*d)
        expected = self.num_matrices * self.hidden_size
        if U.shape[-1] != expected:
            raise ValueError(
                "transform_module returned U of width {} but this layer needs {}".format(U.shape[-1], expected)
            )
        skip = None
        if self.num_matrices == 3:
            skip = residual * self.scale_x.to(residual.dtype) if self.rescale else residual
        h, c = elementwise_recurrence(
            U,
            skip,
            self.weight_c,
            self.bias,
            c0,
            mask_c=mask_c,
            mask_pad=mask_pad,
        )
        if self.layer_norm is not None and self.normalize_after:
            h = self.layer_norm(h)
        return h, c

    def extra_repr(self) -> str:
        return "{}, {}, k={}, dropout={}, highway_bias={}{}".format(
            self.input_size,
            self.hidden_size,
            self.num_matrices,
            self.dropout,
            self.highway_bias,
            ", rescale=True" if self.rescale else "",
        )
