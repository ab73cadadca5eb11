"""Fixed-shape incremental decoding: every index of the step lives on the device.

:class:`~fairseq_srupp.modules.decoding_cache.DecodingCache` decides on the host, once per step, which
slot the new token writes and how many slots it attends to, and grows its buffers while the window
fills. The shapes of a step therefore change and its indices are Python integers: a CUDA graph cannot
replay it. :class:`RingCache` keeps the same contents with shapes fixed from the first step:

* all S = window + 1 slots are allocated at once, zero-filled, so every slot holds finite values;
* the slot the next token writes is a device tensor (``slot``), advanced in place modulo S;
* every query attends to all S slots through a key bias (B, 1, 1, S): 0 where a slot holds a real
  token, the dtype's lowest finite value at slots not written yet and at padded tokens (the value
  :func:`~fairseq_srupp.modules.transforms.attention_bias` gives padded keys). Stepped eagerly
  (``growing_view``), it attends to the slots filled so far while the window fills, which costs what
  ``DecodingCache`` does; a graph keeps all S.

A hidden slot gets exactly zero probability next to any visible one, so the outputs at real tokens
are those of ``DecodingCache`` up to rounding. Attention has no positions, so the order of the slots
does not matter (see the worked example in ``decoding_cache``). A query that sees nothing but padding
(a padded token before any real one) spreads its weight over all S slots instead of the filled ones;
that output belongs to a padded position and reaches no real one (its key is hidden, its cell state
unchanged). The cell states are kept in :func:`state_dtype` (fp32 for 16-bit activations), as the
fused recurrence carries them inside a sequence.

One step (no host synchronisation, no allocation that depends on the step): ``begin(pad)``; each
attention layer ``attend(index, k, v)`` (through :meth:`layers`); ``end(c)``.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .decoding_cache import DecodingCache, LayerHandle, layer_handles


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype cell states are carried in between decoding steps of activations in ``dtype``."""
    return torch.promote_types(dtype, torch.float32)


def ring_bytes(window: int, attention_layers: int, batch: int, proj_size: int, num_layers: int, hidden_size: int,
               dtype: torch.dtype) -> int:
    """Bytes a :class:`RingCache` of these sizes allocates (keys and values, key bias, cell states, the
    new token's bias and the slot index)."""
    item = torch.empty((), dtype=dtype).element_size()
    slots = window + 1
    return (2 * attention_layers * batch * slots * proj_size * item + batch * (slots + 1) * item
            + num_layers * batch * hidden_size * torch.empty((), dtype=state_dtype(dtype)).element_size() + 8)


class RingCache:
    """Cell states and the last ``window + 1`` keys/values of every attention layer, in fixed buffers.

    Layout (A attention layers, B sequences, H heads, hd head width, S = window + 1):

    * ``keys``, ``values``: (A, B, H, S, hd) in ``dtype``;
    * ``key_bias``: (B, 1, 1, S) in ``dtype``, added to every layer's attention scores;
    * ``slot``: (1,) int64, the slot of the next token;
    * ``c``: (num_layers, B, hidden_size) in ``c_dtype`` (default :func:`state_dtype`), the cell states
      after the last token.
    """

    def __init__(self, window: int, attention_layers: int, batch: int, heads: int, head_dim: int,
                 num_layers: int, hidden_size: int, dtype: torch.dtype, device,
                 c_dtype: Optional[torch.dtype] = None, growing_view: bool = False):
        if window < 1:
            raise ValueError("the attention window must be >= 1, got {}".format(window))
        self.window = window
        self.slots = window + 1
        self.attention_layers = attention_layers
        self.batch = batch
        self.hidden_value = torch.finfo(dtype).min
        shape = (attention_layers, batch, heads, self.slots, head_dim)
        # A growing view reads no slot before it is written: its buffers need no zeros, so a large window
        # costs memory (on the CPU even its pages) only as it fills.
        allocate = torch.empty if growing_view else torch.zeros
        self.keys = allocate(shape, dtype=dtype, device=device)
        self.values = allocate(shape, dtype=dtype, device=device)
        self.key_bias = torch.full((batch, 1, 1, self.slots), self.hidden_value, dtype=dtype, device=device)
        self.visible = torch.zeros(batch, 1, 1, 1, dtype=dtype, device=device)  # a new real token's bias
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.c = torch.zeros(num_layers, batch, hidden_size, dtype=c_dtype or state_dtype(dtype), device=device)
        self.consumed = 0  # host-side count, kept by the caller (the token being stepped included)
        self._growing_view = growing_view

    @property
    def growing_view(self) -> bool:
        """Eager steps only (a graph's shapes are fixed): while the window fills, attend to the slots filled
        so far, 0 … consumed-1 (filled in order until the ring wraps), instead of all S."""
        return self._growing_view

    @growing_view.setter
    def growing_view(self, value: bool) -> None:
        if self._growing_view and not value:  # the slots not written yet become visible: hidden and finite
            self.keys[:, :, :, self.filled:].zero_()
            self.values[:, :, :, self.filled:].zero_()
        self._growing_view = value

    @property
    def filled(self) -> int:
        """Slots that hold a consumed token (host-side, from ``consumed``)."""
        return min(self.consumed, self.slots)

    def tensors(self) -> Tuple[Tensor, ...]:
        """Every buffer a step changes (to save and restore around a CUDA graph's warm-up)."""
        return self.keys, self.values, self.key_bias, self.slot, self.c

    def layers(self, has_attention: Sequence[bool]) -> List[Optional[LayerHandle]]:
        """One entry per layer of the stack: a handle for attention layers, None for the others."""
        return layer_handles(self, self.attention_layers, has_attention)

    # ------------------------------------------------------------------------------------- step
    def begin(self, pad: Optional[Tensor] = None) -> None:
        """Start a step of one token per sequence; ``pad``: (B,) bool, True where the token is padding."""
        bias = self.visible if pad is None else self.visible.masked_fill(pad.view(-1, 1, 1, 1), self.hidden_value)
        self.key_bias.index_copy_(3, self.slot, bias)

    def attend(self, index: int, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Store attention layer ``index``'s key/value of the new token, k / v (B, H, 1, hd), at the slot.

        Returns the keys and values (B, H, S, hd) its query attends to and the key bias (B, 1, 1, S); with
        ``growing_view``, only the first ``consumed`` slots of each while the window fills.
        """
        self.keys[index].index_copy_(2, self.slot, k)
        self.values[index].index_copy_(2, self.slot, v)
        if self.growing_view and self.consumed < self.slots:
            seen = self.consumed
            return self.keys[index, :, :, :seen], self.values[index, :, :, :seen], self.key_bias[..., :seen]
        return self.keys[index], self.values[index], self.key_bias

    def end(self, c: Tensor) -> None:
        """Finish the step; ``c`` (num_layers, B, d): the cell states after the new token."""
        self.c.copy_(c)
        self.slot.add_(1).remainder_(self.slots)

    # -------------------------------------------------------------------------------- beam search
    def reorder_(self, new_order: Tensor) -> None:
        """Keep sequence ``new_order[j]`` as sequence j, in the same buffers (a captured graph stays valid);
        ``new_order``: (B,) indices, as many as the ring holds sequences. Only the filled slots are moved
        (the others are hidden in every sequence), so a short output's beam search copies little."""
        if new_order.numel() != self.batch:
            raise ValueError("reorder_ keeps {} sequences, got {} indices: use select() to change the batch".format(
                self.batch, new_order.numel()))
        new_order = new_order.to(self.keys.device)
        for buffer, dim in self._sequence_buffers():
            buffer.copy_(buffer.index_select(dim, new_order))

    def select(self, new_order: Tensor) -> "RingCache":
        """A new ring holding sequences ``new_order`` (any number, repeats allowed) of this one."""
        attention_layers, _, heads, _, head_dim = self.keys.shape
        num_layers, _, hidden_size = self.c.shape
        ring = RingCache(self.window, attention_layers, new_order.numel(), heads, head_dim, num_layers, hidden_size,
                         self.keys.dtype, self.keys.device, c_dtype=self.c.dtype, growing_view=self._growing_view)
        ring.consumed = self.consumed
        ring.slot.copy_(self.slot)
        new_order = new_order.to(self.keys.device)
        for (mine, dim), (theirs, _) in zip(self._sequence_buffers(), ring._sequence_buffers()):
            theirs.copy_(mine.index_select(dim, new_order))
        return ring

    def _sequence_buffers(self):
        """(buffer view, its batch dim) of what a sequence holds: the filled slots' keys, values and bias."""
        filled = self.filled
        return ((self.keys.narrow(3, 0, filled), 1), (self.values.narrow(3, 0, filled), 1),
                (self.key_bias.narrow(3, 0, filled), 0), (self.c, 1))

    # ---------------------------------------------------------------------------------- loading
    def to_cache(self) -> DecodingCache:
        """A :class:`DecodingCache` holding what this ring holds (to decode a chunk of several tokens after
        single steps). Reads the slot index on the host: one synchronisation, outside any step."""
        if self.consumed == 0:
            raise ValueError("the ring has not consumed any token yet")
        cache = DecodingCache(self.window, self.attention_layers)
        filled = self.filled
        order = (torch.arange(self.slots, device=self.slot.device) + self.slot).remainder_(self.slots)[-filled:]
        cache.keys, cache.values = self.keys.index_select(3, order), self.values.index_select(3, order)
        hidden = self.key_bias.view(self.batch, self.slots).index_select(1, order).eq(self.hidden_value)
        padded = hidden.any(0).nonzero()  # positions, oldest first, padded in some sequence
        if padded.numel():
            cache.pad = hidden.new_zeros(self.batch, self.slots)
            cache.pad[:, :filled] = hidden
            cache.last_pad = self.consumed - filled + int(padded.max())
        cache.c = self.c.clone()
        cache.filled, cache.head, cache.consumed = filled, 0, self.consumed
        return cache


    def load(self, cache: DecodingCache) -> None:
        """Take over what a :class:`DecodingCache` holds (e.g. after a prompt, decoded as one chunk)."""
        if cache.window != self.window or cache.attention_layers != self.attention_layers:
            raise ValueError("a cache of window {} and {} attention layers cannot load one of window {} and {}".format(
                self.window, self.attention_layers, cache.window, cache.attention_layers))
        if cache.c is None:
            raise ValueError("the DecodingCache has not consumed any token yet")
        if cache.c.shape[1] != self.batch:
            raise ValueError("the DecodingCache holds {} sequences, this ring {}".format(cache.c.shape[1], self.batch))
        filled = cache.filled
        for index in range(self.attention_layers):
            keys, values = cache.ordered(index)  # (B, H, filled, hd), oldest first
            self.keys[index, :, :, :filled] = keys
            self.values[index, :, :, :filled] = values
        self.key_bias.fill_(self.hidden_value)
        self.key_bias[..., :filled] = 0
        padded = cache.ordered_padding()  # (B, filled) or None
        if padded is not None:
            self.key_bias[..., :filled].masked_fill_(padded.view(self.batch, 1, 1, filled), self.hidden_value)
        self.slot.fill_(filled % self.slots)
        self.c.copy_(cache.c)
        self.consumed = cache.consumed
