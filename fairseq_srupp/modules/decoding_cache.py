"""What incremental decoding (generation) keeps between calls of an SRU++ stack.

Every new token attends to itself and the ``window`` positions before it (the same-length mask of
evaluation), so each attention layer needs the keys/values of the last ``window + 1`` positions
only, and every layer its cell state c. :class:`DecodingCache` holds them and decides, once per
step for all layers, where the new positions go and what they may see.

Worked example, window 2 (S = 3 slots), one token per step, positions p0 p1 p2 ...::

    after p0   slots [p0  .  . ]  filled 1           (growing: appended in order)
    after p2   slots [p0 p1 p2 ]  filled 3, head 0   (full)
    p3         slots [p3 p1 p2 ]  head 1             p3 overwrites p0, the one position it must not
                                                     see, and attends to all slots: attention has no
                                                     notion of order, so the ring needs no copy
    p4         slots [p3 p4 p2 ]  head 2             ordered view: p2 p3 p4

A step of several tokens (a prompt) attends to the ordered view followed by the new positions with
the same-length mask, then keeps the last S positions in order (head 0).

This module does not import fairseq; ``SRUppDecoder`` packs a cache into fairseq's incremental
state with :meth:`DecodingCache.to_state` / :meth:`DecodingCache.from_state`.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .attention_masks import same_length_mask
from .transforms import attention_bias


@dataclass
class _Step:
    """What :meth:`DecodingCache.begin` decided for the new positions, shared by every layer."""

    length: int  # new positions L
    chunk: bool  # L > 1: ordered view + new positions, same-length mask
    slot: int  # single token: the slot it is written to
    attended: int  # number of key positions each query is scored against
    capacity: int  # slots the key/value buffers need after this step
    keep: int  # chunk: leading positions of [ordered view; new] that drop out of the cache
    key_pad: Optional[Tensor]  # (B, attended) bool, None when no attended position is padding
    next_pad: Optional[Tensor]  # chunk: the pad buffer after the step
    new_keys: Optional[Tensor] = None  # chunk: the key/value buffers after the step
    new_values: Optional[Tensor] = None
    bias: Optional[Tensor] = None  # attention bias, built by the first layer, reused by the others
    bias_built: bool = False


class LayerHandle:
    """One attention layer's handle on a cache (a :class:`DecodingCache` or a
    :class:`~fairseq_srupp.modules.decoding_ring.RingCache`): what ``forward_incremental`` gets."""

    __slots__ = ("cache", "index")

    def __init__(self, cache, index: int):
        self.cache, self.index = cache, index

    def attend(self, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        return self.cache.attend(self.index, k, v)


def layer_handles(cache, attention_layers: int, has_attention: Sequence[bool]) -> List[Optional[LayerHandle]]:
    """One entry per layer of a stack: a handle on ``cache`` for attention layers (numbered in order),
    None for the others; ``attention_layers``: how many the cache was made for."""
    handles, index = [], 0
    for attends in has_attention:
        handles.append(LayerHandle(cache, index) if attends else None)
        index += int(attends)
    if index != attention_layers:
        raise ValueError("the cache was made for {} attention layers, the stack has {}".format(
            attention_layers, index))
    return handles


class DecodingCache:
    """Cell states and rolling attention keys/values of incremental decoding.

    Layout (A attention layers, B sequences, H heads, hd = n_proj / H, S = window + 1):

    * ``c``: (num_layers, B, d) cell states after the last position (None before the first step).
    * ``keys``, ``values``: (A, B, H, capacity, hd); slots ``0 … filled-1`` hold positions
      ``consumed-filled … consumed-1``, in order from slot ``head`` on (a ring once ``filled == S``).
      The capacity doubles while the window fills, up to S, so the first W tokens do not
      reallocate the cache at every token.
    * ``pad``: (B, S) bool per slot, kept only while a padded position is cached (else None), so a
      step without padding needs no mask and no host synchronisation per layer.

    One step: ``begin(L, pad)``; each attention layer ``attend(index, k, v)`` (or through
    :meth:`layers`); ``end(c)``.
    """

    def __init__(self, window: int, attention_layers: int):
        if window < 1:
            raise ValueError("the attention window must be >= 1, got {}".format(window))
        self.window = window
        self.slots = window + 1
        self.attention_layers = attention_layers
        self.c: Optional[Tensor] = None
        self.keys: Optional[Tensor] = None
        self.values: Optional[Tensor] = None
        self.pad: Optional[Tensor] = None
        self.filled = 0
        self.head = 0
        self.consumed = 0
        self.last_pad = -1  # absolute position of the latest padded token (-1: none yet)
        self._step: Optional[_Step] = None

    # ------------------------------------------------------------------ fairseq's incremental state
    def to_state(self) -> Dict[str, Tensor]:
        """The cache as the flat dict of tensors fairseq's incremental state holds (no Nones)."""
        counters = [self.window, self.attention_layers, self.filled, self.head, self.consumed, self.last_pad]
        state = {"counters": torch.tensor(counters, dtype=torch.long)}  # on the CPU: no device sync to read
        for name in ("c", "keys", "values", "pad"):
            if getattr(self, name) is not None:
                state[name] = getattr(self, name)
        return state

    @classmethod
    def from_state(cls, state: Dict[str, Optional[Tensor]]) -> "DecodingCache":
        window, attention_layers, filled, head, consumed, last_pad = state["counters"].tolist()
        cache = cls(window, attention_layers)
        cache.filled, cache.head, cache.consumed, cache.last_pad = filled, head, consumed, last_pad
        for name in ("c", "keys", "values", "pad"):
            setattr(cache, name, state.get(name))
        return cache

    def reorder(self, new_order: Tensor) -> None:
        """Keep sequence ``new_order[j]`` as sequence j (beam search)."""
        if self.c is not None:
            self.c = self.c.index_select(1, new_order)
        if self.keys is not None:
            self.keys = self.keys.index_select(1, new_order)
            self.values = self.values.index_select(1, new_order)
        if self.pad is not None:
            self.pad = self.pad.index_select(0, new_order)

    # ------------------------------------------------------------------------------------ views
    def layers(self, has_attention: Sequence[bool]) -> List[Optional[LayerHandle]]:
        """One entry per layer of the stack: a handle for attention layers, None for the others."""
        return layer_handles(self, self.attention_layers, has_attention)

    def ordered(self, index: int) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """Keys and values (B, H, filled, hd) of attention layer ``index``, oldest position first."""
        if self.keys is None:
            return None, None
        return self._in_order(self.keys[index], 2), self._in_order(self.values[index], 2)

    def ordered_padding(self) -> Optional[Tensor]:
        """(B, filled) bool, True where a cached position is padding, oldest first; None when none is."""
        return None if self.pad is None else self._in_order(self.pad, 1)

    def _in_order(self, buffer: Tensor, dim: int) -> Tensor:
        kept = buffer.narrow(dim, 0, self.filled)
        if self.head == 0:
            return kept
        return torch.cat([kept.narrow(dim, self.head, self.filled - self.head), kept.narrow(dim, 0, self.head)], dim)

    # ------------------------------------------------------------------------------------- step
    def begin(self, length: int, pad: Optional[Tensor] = None) -> None:
        """Start a step of ``length`` new positions; ``pad``: (B, length) bool, or None when none of
        them is padding (the caller checks once per step, not once per layer)."""
        if self._step is not None:
            raise RuntimeError("DecodingCache.begin() called again before end()")
        if length < 1:
            raise ValueError("a decoding step needs at least one new position")
        start = self.consumed  # absolute position of the first new token
        if pad is not None:
            self.last_pad = start + int(pad.any(0).nonzero().max())  # rare: only steps with padding
        chunk = length > 1
        if chunk:
            total = self.filled + length
            keep = max(0, total - self.slots)
            step = _Step(length, True, 0, total, total - keep, keep, None, None)
            if self.last_pad >= start - self.filled:  # a padded position among the attended ones
                batch = pad.shape[0] if pad is not None else self.pad.shape[0]
                device = pad.device if pad is not None else self.pad.device
                old = (self._in_order(self.pad, 1) if self.pad is not None
                       else torch.zeros(batch, self.filled, dtype=torch.bool, device=device))
                new = pad.bool() if pad is not None else torch.zeros(batch, length, dtype=torch.bool, device=device)
                step.key_pad = torch.cat([old, new], dim=1)  # (B, filled + L)
                step.next_pad = torch.zeros(batch, self.slots, dtype=torch.bool, device=device)
                step.next_pad[:, : total - keep] = step.key_pad[:, keep:]
        else:
            full = self.filled == self.slots
            slot = self.head if full else self.filled
            attended = self.slots if full else self.filled + 1
            capacity = self._capacity()
            if capacity <= self.filled:  # no free slot: double (amortised O(1) per token)
                capacity = min(self.slots, max(2 * capacity, 1))
            step = _Step(1, False, slot, attended, capacity, 0, None, None)
            if self.pad is None and pad is not None:
                self.pad = torch.zeros(pad.shape[0], self.slots, dtype=torch.bool, device=pad.device)
            if self.pad is not None:
                self.pad[:, slot] = pad[:, 0] if pad is not None else False
                if self.last_pad >= start - (attended - 1):
                    step.key_pad = self.pad[:, :attended]
        self._step = step

    def attend(self, index: int, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """Store attention layer ``index``'s keys/values of the new positions, k/v (B, H, L, hd).

        Returns the keys and values (B, H, S', hd) its queries attend to and the additive bias
        (None, or broadcastable to (B, H, L, S')) that hides what each query must not see.
        """
        step = self._step
        if step is None:
            raise RuntimeError("DecodingCache.attend() outside begin() / end()")
        if step.chunk:
            old_k, old_v = self.ordered(index)
            if old_k is not None:
                k, v = torch.cat([old_k, k], dim=2), torch.cat([old_v, v], dim=2)  # (B, H, filled + L, hd)
            if step.new_keys is None:
                shape = (self.attention_layers,) + k.shape[:2] + (step.capacity, k.shape[3])
                step.new_keys, step.new_values = k.new_empty(shape), v.new_empty(shape)
            step.new_keys[index] = k[:, :, step.keep:]
            step.new_values[index] = v[:, :, step.keep:]
            return k, v, self._bias(step, k)
        if self._capacity() < step.capacity:  # the first attention layer of the step grows all
            self._grow(k, v, step.capacity)
        self.keys[index, :, :, step.slot] = k[:, :, 0]
        self.values[index, :, :, step.slot] = v[:, :, 0]
        keys, values = self.keys[index], self.values[index]
        if step.attended < keys.shape[2]:
            keys, values = keys[:, :, : step.attended], values[:, :, : step.attended]
        return keys, values, self._bias(step, k)

    def end(self, c: Tensor) -> None:
        """Finish the step; ``c`` (num_layers, B, d): the cell states after its last position."""
        step = self._step
        if step is None:
            raise RuntimeError("DecodingCache.end() without begin()")
        if step.chunk:
            if step.new_keys is not None:
                self.keys, self.values = step.new_keys, step.new_values
            self.pad, self.filled, self.head = step.next_pad, step.capacity, 0
        elif self.filled < self.slots:
            self.filled += 1
        else:
            self.head = (self.head + 1) % self.slots
        self.consumed += step.length
        if self.pad is not None and self.last_pad < self.consumed - self.filled:
            self.pad = None  # the last padded position left the window
        self.c = c
        self._step = None

    # ---------------------------------------------------------------------------------- helpers
    def _capacity(self) -> int:
        return 0 if self.keys is None else self.keys.shape[3]

    def _grow(self, k: Tensor, v: Tensor, capacity: int) -> None:
        shape = (self.attention_layers,) + k.shape[:2] + (capacity, k.shape[3])
        keys, values = k.new_empty(shape), v.new_empty(shape)
        if self.keys is not None:
            keys[:, :, :, : self.filled] = self.keys[:, :, :, : self.filled]
            values[:, :, :, : self.filled] = self.values[:, :, :, : self.filled]
        self.keys, self.values = keys, values

    def _bias(self, step: _Step, k: Tensor) -> Optional[Tensor]:
        if not step.bias_built:
            key_padding = None if step.key_pad is None else step.key_pad.t()  # (S', B)
            mask = None
            if step.chunk:
                mask = same_length_mask(step.length, step.attended - step.length, self.window,
                                        device=k.device, dtype=k.dtype)
            step.bias = attention_bias(mask, key_padding, step.length, step.attended, k.dtype)
            step.bias_built = True
        return step.bias
