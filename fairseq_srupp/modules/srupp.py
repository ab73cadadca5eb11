"""The SRU++ stack: a drop-in for ``sru.SRUpp`` (unidirectional, as used for language modelling)."""
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .attention_masks import AttentionMask, mask_for_sdpa
from .srupp_layer import SRUppLayer
from .transforms import SRUppAttention, SRUppProjectedLinear, linear_without_bias


def layer_has_attention(
    layer_index: int, attention_every_n_layers: int = 1, num_layers: int = 0, attention_last_n_layers: int = -1
) -> bool:
    """Whether layer i (0-based) of ``num_layers`` attends (the others only project).

    ``attention_last_n_layers`` n ≥ 0: the last n layers attend. Otherwise layer i attends iff
    (i+1) % attention_every_n_layers == 0: every=5 with 10 layers → layers 5 and 10 (1-based).
    """
    if attention_last_n_layers != -1:
        return num_layers - layer_index <= attention_last_n_layers
    return (layer_index + 1) % attention_every_n_layers == 0


class SRUpp(nn.Module):
    """A stack of SRU++ layers (spec §1–2).

    Constructor and ``forward`` arguments, their order and parameter names match ``sru.SRUpp``
    (3.0.0.dev6), so code written for it runs unchanged and
    ``SRUpp(...).load_state_dict(sru_model.state_dict())`` works.

    Args:
        input_size: width of the input features.
        hidden_size: d, width of every layer's h and c.
        proj_size: p, attention / projection width.
        num_layers: depth.
        dropout: variational dropout of every layer but the last, and dropout before W3 / W2.
        attn_dropout: dropout on attention probabilities.
        num_heads: attention heads.
        bidirectional: must be False. Accepted so ``sru.SRUpp`` keyword sets work; True is
            refused because a backward pass over time lets every position see the future, which
            a language model (causal attention masks, carried state, incremental decoding) cannot use.
        layer_norm: LayerNorm in each layer (pre-norm unless ``normalize_after``).
        normalize_after: post-norm layers.
        attn_layer_norm: LayerNorm inside the attention / projection block.
        highway_bias: initial reset-gate bias.
        attention_every_n_layers: layer i attends iff (i+1) % n == 0, others project only.
        attention_last_n_layers: if ≥ 0, only the last n layers attend (0: none); cannot be
            combined with ``attention_every_n_layers`` ≠ 1. −1 (default): unused.
        rescale: scale each k=3 layer's skip term by √(1 + 2·exp(highway_bias)).
        nn_rnn_compatible_return: return c as (num_layers · directions, B, d) like ``nn.RNN``;
            with one direction that is the default (num_layers, B, d) layout, so it changes nothing.
        proj_input_to_hidden_first: when input_size ≠ hidden_size, first map the input with a
            bias-free Linear (``input_to_hidden``) to hidden_size, so every layer has k=3.
        weight_c_init: range of the uniform initialisation of v_f, v_r.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        proj_size: int,
        num_layers: int = 2,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        num_heads: int = 1,
        bidirectional: bool = False,
        layer_norm: bool = False,
        normalize_after: bool = False,
        attn_layer_norm: bool = True,
        highway_bias: float = -2.0,
        attention_every_n_layers: int = 1,
        attention_last_n_layers: int = -1,
        rescale: bool = False,
        nn_rnn_compatible_return: bool = False,
        proj_input_to_hidden_first: bool = False,
        weight_c_init: float = 1.0,
    ):
        super().__init__()
        if bidirectional:
            raise ValueError(
                "bidirectional=True is not supported: fairseq_srupp's SRUpp is unidirectional, because "
                "a backward recurrence lets every position see future tokens, which a language model "
                "(causal masks, carried state, incremental decoding) cannot use; use sru.SRUpp for "
                "bidirectional encoders"
            )
        if num_layers < 1:
            raise ValueError("num_layers must be >= 1, got {}".format(num_layers))
        if attention_every_n_layers < 1:
            raise ValueError("attention_every_n_layers must be >= 1, got {}".format(attention_every_n_layers))
        if attention_last_n_layers < -1:
            raise ValueError(
                "attention_last_n_layers must be -1 (unused) or >= 0, got {}".format(attention_last_n_layers)
            )
        if attention_every_n_layers != 1 and attention_last_n_layers != -1:
            raise ValueError(
                "set either attention_every_n_layers ({}) or attention_last_n_layers ({}), not both".format(
                    attention_every_n_layers, attention_last_n_layers
                )
            )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = hidden_size
        self.proj_size = proj_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.dropout = dropout
        self.bidirectional = False
        self.num_directions = 1
        self.use_layer_norm = layer_norm
        self.attention_every_n_layers = attention_every_n_layers
        self.attention_last_n_layers = attention_last_n_layers
        self.nn_rnn_compatible_return = nn_rnn_compatible_return
        self.input_to_hidden: Optional[nn.Linear] = None
        first_input_size = input_size
        if proj_input_to_hidden_first and input_size != hidden_size:
            self.input_to_hidden = linear_without_bias(input_size, hidden_size)
            nn.init.xavier_uniform_(self.input_to_hidden.weight)  # before the layers, as sru.SRUpp
            first_input_size = hidden_size
        self.rnn_lst = nn.ModuleList()
        for i in range(num_layers):
            in_features = first_input_size if i == 0 else hidden_size
            out_features = hidden_size * (3 if in_features == hidden_size else 4)
            if layer_has_attention(i, attention_every_n_layers, num_layers, attention_last_n_layers):
                transform = SRUppAttention(
                    in_features,
                    out_features,
                    proj_size,
                    num_heads=num_heads,
                    dropout=dropout,
                    attn_dropout=attn_dropout,
                    layer_norm=attn_layer_norm,
                )
            else:
                transform = SRUppProjectedLinear(
                    in_features, out_features, proj_size, dropout=dropout, layer_norm=attn_layer_norm
                )
            self.rnn_lst.append(
                SRUppLayer(
                    in_features,
                    hidden_size,
                    transform,
                    dropout=dropout if i + 1 != num_layers else 0.0,
                    layer_norm=layer_norm,
                    normalize_after=normalize_after,
                    highway_bias=highway_bias,
                    weight_c_init=weight_c_init,
                    rescale=rescale,
                )
            )

    def __getitem__(self, n: int) -> SRUppLayer:
        return self.rnn_lst[n]

    def reset_parameters(self):
        for layer in self.rnn_lst:
            layer.reset_parameters()
        if self.input_to_hidden is not None:
            nn.init.xavier_uniform_(self.input_to_hidden.weight)

    def forward(
        self,
        input: Union[Tensor, PackedSequence],
        c0: Optional[Tensor] = None,
        mask_pad: Optional[Tensor] = None,
        attn_mask: Optional[AttentionMask] = None,
        memory: Optional[List[Optional[Tensor]]] = None,
        memory_mask_pad: Optional[Tensor] = None,
        caches: Optional[List] = None,
    ) -> Tuple[Tensor, Tensor, List[Tensor]]:
        """
        Args:
            input: (L, B, input_size), or a ``PackedSequence`` of such sequences (as for
                ``nn.RNN``): then ``mask_pad`` comes from its lengths and h is returned packed.
            c0: optional (num_layers, B, d) initial cell states.
            mask_pad: optional (L, B) bool, True at padding.
            attn_mask: optional additive (L, M+L) float mask (M = memory length, 0 without memory),
                or the causal structure ``torch.nn.attention.bias.causal_lower_right(L, M+L)``: CUDA
                attention then runs without a mask tensor (see ``attention_masks``).
            memory: optional list of num_layers tensors (M, B, d_in of that layer) or Nones: the
                raw inputs of each layer from the previous segment.
            memory_mask_pad: optional (M, B) bool padding of the memory.
            caches: incremental decoding: one entry per layer, ``DecodingCache.layers(...)`` (see
                fairseq_srupp/modules/decoding_cache.py): the attention layers' cached keys/values
                of the last window + 1 positions, updated in place.
        Returns:
            h: (L, B, d) top-layer output (packed if the input was),
            c: (num_layers, B, d) last cell state of every layer,
            saved_inputs: list of num_layers raw layer inputs (L, B, d_in), the next memory
                (``sru.SRUpp`` returns the same list as ``{"saved_inputs": [...]}``).
        """
        lengths = None
        if isinstance(input, PackedSequence):
            input, lengths = pad_packed_sequence(input)  # (L, B, input_size), (B,)
            mask_pad = torch.arange(input.shape[0]).unsqueeze(1) >= lengths.unsqueeze(0)  # (L, B)
            mask_pad = mask_pad.to(input.device)
        if input.dim() != 3:
            raise ValueError("input must be (L, B, input_size), got {}".format(tuple(input.shape)))
        length, batch, width = input.shape
        if length == 0 or batch == 0:
            raise ValueError("input must hold at least one position and one sequence (L, B >= 1), got {}".format(
                tuple(input.shape)))
        if width != self.input_size:
            raise ValueError(
                "input has size (*, *, {}) but expect a last dimension of {}".format(width, self.input_size)
            )
        if c0 is not None and tuple(c0.shape) != (self.num_layers, batch, self.hidden_size):
            raise ValueError(
                "c0 has size {} but expect {}".format(list(c0.shape), [self.num_layers, batch, self.hidden_size])
            )
        if mask_pad is not None and tuple(mask_pad.shape) != (length, batch):
            raise ValueError("mask_pad has size {} but expect {}".format(list(mask_pad.shape), [length, batch]))
        if memory is not None and (not isinstance(memory, (list, tuple)) or len(memory) != self.num_layers):
            raise ValueError(
                "memory must be a list of {} tensors (one per layer), got {}".format(
                    self.num_layers, type(memory).__name__ if not isinstance(memory, (list, tuple)) else len(memory)
                )
            )
        if caches is not None and len(caches) != self.num_layers:
            raise ValueError(
                "incremental decoding needs one cache entry per layer ({}), got {}".format(self.num_layers, len(caches))
            )
        if mask_pad is not None:
            mask_pad = mask_pad.bool()

        # Where the structure cannot reach SDPA (CPU, key padding, the additive switch), build its
        # tensor once here rather than in every layer.
        attn_mask = mask_for_sdpa(attn_mask, input.device, input.dtype,
                               key_padding=mask_pad is not None or memory_mask_pad is not None)
        x = input if self.input_to_hidden is None else self.input_to_hidden(input)
        saved_inputs: List[Tensor] = []
        last_c: List[Tensor] = []
        for i, layer in enumerate(self.rnn_lst):
            saved_inputs.append(x)
            x, c = layer(
                x,
                None if c0 is None else c0[i],
                mask_pad=mask_pad,
                attn_mask=attn_mask,
                memory=None if memory is None else memory[i],
                memory_mask_pad=memory_mask_pad,
                cache=None if caches is None else caches[i],
            )
            last_c.append(c)
        # nn_rnn_compatible_return orders c as (layers · directions, B, d): with one direction that
        # is already this layout.
        if lengths is not None:
            x = pack_padded_sequence(x, lengths, enforce_sorted=False)
        return x, torch.stack(last_c), saved_inputs
