"""What ``srupp_language_modeling`` and the SRU++ decoder say to each other about carried state.

Two small objects replace the untyped ``carry`` dict of earlier versions:

* :class:`SegmentContext` travels with every batch (``net_input["segment"]``): which attention
  mask the segment uses, and — only when state is carried — which state it continues, whether
  that state is forgotten before it (first segment of an epoch or of an evaluation) and after it
  (last segment of an evaluation, so evaluation state does not stay on the device for the rest of
  the run).
* :class:`CarriedStateStore` lives on the decoder (``decoder.carried``) and holds one
  :class:`CarriedState` per key, detached from the graph.

Worked example: a worker with B = 2 training streams cut into 3 segments, then a validation pass
of 2 segments. ``mask`` is ``causal`` for training, ``same_length`` (window W) for evaluation::

    batch              segment context                                 store after the forward
    train seg 0        SegmentContext("causal", state="train", reset=True)   {train: s0}
    train seg 1        SegmentContext("causal", state="train")               {train: s1}
      valid seg 0      SegmentContext("same_length", W, state="valid", reset=True)   {train: s1, valid: v0}
      valid seg 1      SegmentContext("same_length", W, state="valid", release=True) {train: s1}
    train seg 2        SegmentContext("causal", state="train")               {train: s2}   (continues s1)

With ``--no-carry-state`` the context names no state (``state=None``): the mask still applies,
every segment starts from zero and the store stays empty.

A checkpoint saves ``store.state_dict(["train"])`` next to itself (see
:mod:`fairseq_srupp.tasks.resume`), so a resumed run continues segment 2 from ``s1`` exactly.
"""
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

import torch
from torch import Tensor

MASKS = ("causal", "same_length")


@dataclass(frozen=True)
class SegmentContext:
    """How the decoder runs one segment of B streams (module-level and frozen, so it pickles).

    mask: ``causal`` (training: every query sees all memory and the current prefix) or
        ``same_length`` (evaluation: every query sees itself and the ``window`` positions before it).
    window: attention window W of ``same_length``; unused by ``causal``.
    state: key of the carried state this segment continues (``train``, ``valid``, ...); None means
        start from zero and keep nothing.
    reset: forget ``state`` before the segment.
    release: forget ``state`` after the segment.
    """

    mask: str = "causal"
    window: Optional[int] = None
    state: Optional[str] = None
    reset: bool = False
    release: bool = False

    def __post_init__(self):
        if self.mask not in MASKS:
            raise ValueError("mask must be one of {}, got {!r}".format(MASKS, self.mask))
        if self.mask == "same_length" and (self.window is None or self.window < 1):
            raise ValueError("a same_length mask needs a positive window, got {}".format(self.window))

    @classmethod
    def from_legacy_dict(cls, carry: Dict) -> "SegmentContext":
        """The ``carry`` dict of earlier versions (key, reset, enabled, mask, window)."""
        enabled = carry.get("enabled", True)
        return cls(
            mask=carry.get("mask", "causal"),
            window=carry.get("window"),
            state=carry.get("key") if enabled else None,
            reset=bool(carry.get("reset", False)) and enabled,
        )


@dataclass
class CarriedState:
    """What one batch of streams hands to its next segment, detached from the graph."""

    c: Tensor  # (num_layers, B, d): last cell state of every layer
    memory: List[Tensor]  # num_layers × (M, B, d_in): raw layer inputs of the previous segment
    memory_pad: Optional[Tensor]  # (M, B) bool, True at padding; None when there is none

    @property
    def streams(self) -> int:
        return self.c.shape[1]

    def to_dict(self) -> Dict:
        return {"c": self.c, "memory": list(self.memory), "memory_pad": self.memory_pad}

    @classmethod
    def from_dict(cls, saved: Dict, device=None) -> "CarriedState":
        def move(t):
            return None if t is None else t.to(device)

        return cls(move(saved["c"]), [move(m) for m in saved["memory"]], move(saved["memory_pad"]))

    def nbytes(self) -> int:
        tensors = [self.c, *self.memory] + ([self.memory_pad] if self.memory_pad is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)


class CarriedStateStore:
    """Carried state per key ("train", "valid", ...). Not a module buffer: it is neither a
    parameter nor part of the model's state dict; checkpoints save it in side files."""

    def __init__(self):
        self._states: Dict[str, CarriedState] = {}

    def get(self, key: str) -> Optional[CarriedState]:
        return self._states.get(key)

    def put(self, key: str, state: CarriedState) -> None:
        self._states[key] = state

    def reset(self, key: Optional[str] = None) -> None:
        """Forget ``key`` (every key when None)."""
        if key is None:
            self._states.clear()
        else:
            self._states.pop(key, None)

    def keys(self) -> List[str]:
        return list(self._states)

    def __len__(self) -> int:
        return len(self._states)

    def state_dict(self, keys: Optional[Iterable[str]] = None) -> Dict[str, Dict]:
        """``{key: {"c", "memory", "memory_pad"}}`` on the CPU, for ``keys`` (all when None)."""
        keys = self._states.keys() if keys is None else [k for k in keys if k in self._states]
        return {k: {name: _to_cpu(v) for name, v in self._states[k].to_dict().items()} for k in keys}

    def load_state_dict(self, saved: Dict[str, Dict], device=None) -> None:
        for key, value in saved.items():
            self._states[key] = CarriedState.from_dict(value, device)


def _to_cpu(value):
    if isinstance(value, list):
        return [t.detach().cpu() for t in value]
    return None if value is None else value.detach().cpu()


def carried_state_bytes(num_layers: int, streams: int, hidden_size: int, memory_length: int,
                        dtype=torch.float32) -> int:
    """Size of one rank's carried training state: per layer c (B, d) and memory (M, B, d). (The
    (M, B) padding mask, present only after a segment with padding, adds M·B bytes.)"""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    return num_layers * streams * hidden_size * (1 + memory_length) * itemsize
