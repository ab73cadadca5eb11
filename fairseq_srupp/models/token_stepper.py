"""Token-by-token decoding of an ``srupp_lm`` decoder, replayed as one CUDA graph per step on a GPU.

Decoding one token runs every layer on a single position: on a GPU each of the few hundred small
kernels of a step costs more to launch from Python than to run. fairseq's incremental-state protocol
(``decoder(prefix, incremental_state=...)``, :class:`~fairseq_srupp.modules.decoding_cache.DecodingCache`)
also decides on the host where each token goes, and checks the new tokens for padding (a host
synchronisation per step). :class:`TokenStepper` feeds one token per sequence per call through a
:class:`~fairseq_srupp.modules.decoding_ring.RingCache`, whose shapes are fixed and whose indices live
on the device, so the whole step (embedding, every layer, output layer) can be captured once as a CUDA
graph and replayed with a single launch.

Modes (``mode=`` or the environment switch ``FAIRSEQ_SRUPP_DECODING``):

* ``auto`` (default): ``graph`` on CUDA, ``ring`` elsewhere;
* ``cache``: each step through fairseq's incremental state (what ``SequenceGenerator`` does);
* ``ring``: each step through the ring, eagerly (any device; how the graph is checked on a CPU);
* ``graph``: the ring's step captured as a CUDA graph (CUDA only). Should capture with the fused
  recurrence fail, it captures the recurrence's PyTorch reference instead (one time step: a few
  elementwise kernels); should that fail too, it warns once and steps the ring eagerly.

The prompt is always decoded as one chunk through the incremental state, then handed to the ring;
so is any later chunk of several tokens (:meth:`TokenStepper.feed`).

fairseq's own generators (``SequenceGenerator``: ``fairseq-generate``, ``fairseq-interactive``, the hub's
``generate`` / ``sample``) reach a TokenStepper through ``SRUppDecoder``'s incremental state, in the same
modes: the decoder keeps one in the state, reorders it for beam search (:meth:`TokenStepper.reorder`)
and captures a new graph when the batch shrinks (after ``capture_after`` eager steps at that size).
"""
import logging
from typing import Optional

import torch
from torch import Tensor

from fairseq_srupp.errors import SRUppUserError, env_choice
from fairseq_srupp.modules.decoding_cache import DecodingCache
from fairseq_srupp.modules.decoding_ring import RingCache, ring_bytes
from fairseq_srupp.ops.recurrence import forced_implementation

logger = logging.getLogger(__name__)

MODES = ("auto", "cache", "ring", "graph")
MODE_ENV = "FAIRSEQ_SRUPP_DECODING"
WARMUP_STEPS = 2  # eager steps on a side stream before capture (cuBLAS workspaces, kernel compiles)
RECURRENCES_TO_CAPTURE = (None, "reference")  # the fused kernel first, then the PyTorch reference


def sample_parameters(decoder):
    """The decoder's first, middle and last parameters: ``.to()`` / ``.half()`` reallocate every parameter,
    so these three tell whether that happened, at a cost a step can afford (walking all modules cannot)."""
    params = list(decoder.parameters())
    return params[0], params[len(params) // 2], params[-1]


def weights_key(params):
    """Where and how ``params`` are stored."""
    return tuple((p.data_ptr(), p.dtype, p.device) for p in params)


def decoding_mode(device: torch.device, mode: Optional[str] = None) -> str:
    """The mode a stepper on ``device`` runs: ``mode`` or the environment switch, ``auto`` resolved."""
    mode = mode or env_choice(MODE_ENV, MODES)
    if mode not in MODES:
        raise SRUppUserError("decoding mode {!r} is not one of {}".format(mode, ", ".join(MODES)))
    if mode == "auto":
        return "graph" if device.type == "cuda" else "ring"
    if mode == "graph" and device.type != "cuda":
        raise SRUppUserError("{}=graph replays CUDA graphs and needs the model on a GPU; use ring or cache on "
                             "the {}".format(MODE_ENV, device.type.upper()))
    return mode


class TokenStepper:
    """Feed ``batch`` sequences to an ``SRUppDecoder`` one token each per :meth:`step`.

    Args:
        decoder: an ``SRUppDecoder`` (or the model holding it) in eval mode; not trained meanwhile.
        batch: B, the number of sequences.
        mode: see the module docstring (default: ``FAIRSEQ_SRUPP_DECODING``, else ``auto``).
        outputs: ``"logits"``: the decoder's outputs, (B, V) logits (or (B, d) features with the adaptive
            softmax: ``decoder.get_normalized_probs`` turns them into log-probabilities); ``"features"``:
            the last layer's features (B, d), before the output layer.
        capture_after: graph mode captures the step once this many steps ran eagerly at the current batch
            size (0: at the first step).

    :meth:`prompt` first (tokens (B, T), T >= 1), then :meth:`step` with one token per sequence; both
    return the output at the newest position. :meth:`feed` continues with several tokens at once,
    :meth:`reorder` keeps, drops or repeats sequences (beam search). Run them under ``torch.no_grad()``.
    """

    def __init__(self, decoder, batch: int, mode: Optional[str] = None, outputs: str = "logits",
                 capture_after: int = 0):
        decoder = getattr(decoder, "decoder", decoder)
        if decoder.training:
            raise ValueError("TokenStepper decodes with dropout off: call model.eval() first")
        if batch < 1:
            raise ValueError("batch must be >= 1, got {}".format(batch))
        if outputs not in ("logits", "features"):
            raise ValueError("outputs must be 'logits' or 'features', got {!r}".format(outputs))
        self.decoder = decoder
        self.batch = batch
        self.outputs = outputs
        self.capture_after = capture_after
        self.eager_steps = 0  # steps run eagerly at the current batch size (graph mode: capture_after)
        weight = next(decoder.srupp.parameters())
        self.device, self.dtype = weight.device, weight.dtype
        self.mode = decoding_mode(self.device, mode)
        self.state = {}  # fairseq's incremental state (cache mode, and every prompt)
        self.ring = None
        self.graph = None
        self.graph_output = None
        self.graph_failure = None  # why no graph could be captured (graph mode only)
        self.graph_recurrence = None  # the recurrence inside the graph: "fused", or "reference" after a failure
        self.capture_failures = []
        self.tokens = torch.full((batch, 1), decoder.dictionary.eos(), dtype=torch.long, device=self.device)
        self.watched = sample_parameters(decoder)
        self.weights = weights_key(self.watched)

    # ----------------------------------------------------------------------------------- public
    def prompt(self, tokens: Tensor) -> Tensor:
        """Start new sequences: consume ``tokens`` (B, T) as one chunk and return the output at their last
        position (B, V or d). What earlier sequences left is dropped; the ring's buffers and the CUDA
        graph are kept, so a stepper serves one generation after another without capturing again."""
        if tokens.dim() != 2 or tokens.shape[0] != self.batch or tokens.shape[1] < 1:
            raise ValueError("prompt tokens must be (batch={}, T >= 1), got {}".format(self.batch, tuple(tokens.shape)))
        self.state = {}
        if self.ring is not None:
            self.ring.consumed = 0  # emptied: load() overwrites every buffer a step reads
        return self.feed(tokens)[:, -1]

    def feed(self, tokens: Tensor) -> Tensor:
        """Continue the sequences (or start them) with ``tokens`` (B, L), L >= 1, as one chunk through the
        incremental state; return the outputs at all L positions (B, L, V or d)."""
        if tokens.dim() != 2 or tokens.shape[0] != self.batch or tokens.shape[1] < 1:
            raise ValueError("tokens must be (batch={}, T >= 1), got {}".format(self.batch, tuple(tokens.shape)))
        self._check_weights()
        if self._in_ring:
            self.state = {}  # the ring's contents back into a DecodingCache, in order
            self.decoder.set_incremental_state(self.state, "srupp_state", self.ring.to_cache().to_state())
        out = self._output(self.decoder.decode_new_tokens(tokens.to(self.device), self.state))
        if self.mode != "cache":
            self._load_ring()
        return out

    def reorder(self, new_order: Tensor) -> None:
        """Keep sequence ``new_order[j]`` as sequence j (beam search; ``new_order`` (B',) may also drop
        sequences). At the same batch size the ring is reordered in place and a captured graph stays valid;
        at another, the ring is copied to the new size and its step captured again (graph mode)."""
        new_order = new_order.to(self.device)
        if not self._in_ring:
            if self.state:
                self.decoder.reorder_incremental_state(self.state, new_order)
        elif new_order.numel() == self.batch:
            self.ring.reorder_(new_order)
        else:
            self.ring = self.ring.select(new_order)
            self.handles = self.ring.layers(self.decoder.attention_layers())
            self.graph = self.graph_output = None  # its buffers were the old ring's: captured again
        if new_order.numel() != self.batch:
            self.batch = new_order.numel()
            self.tokens = self.tokens.new_full((self.batch, 1), self.decoder.dictionary.eos())
            self.eager_steps = 0

    def step(self, tokens: Tensor) -> Tensor:
        """Consume one token per sequence, ``tokens`` (B,); return the output there (B, V or d)."""
        if tokens.shape != (self.batch,):
            raise ValueError("step takes one token per sequence, (batch={},), got {}".format(
                self.batch, tuple(tokens.shape)))
        # cache mode keeps the prompt in the incremental state; the others move it into the ring
        prompted = bool(self.state) if self.mode == "cache" else self._in_ring
        if not prompted:
            raise ValueError("give the prompt first (at least the beginning-of-sentence token)")
        if self.mode == "cache":
            return self._output(self.decoder.decode_new_tokens(tokens.view(self.batch, 1).to(self.device),
                                                               self.state))[:, 0]
        self._check_weights()
        self.tokens.copy_(tokens.view(self.batch, 1))
        self.ring.consumed += 1
        if (self.mode == "graph" and self.graph is None and self.graph_failure is None
                and self.eager_steps >= self.capture_after):
            self._capture()
        if self.graph is not None:
            self.graph.replay()
            return self.graph_output.clone()  # the next replay overwrites it
        self.eager_steps += 1
        return self._ring_step()

    @property
    def consumed(self) -> int:
        """Tokens consumed so far per sequence, prompt included."""
        if self._in_ring:
            return self.ring.consumed
        cache = self._state_cache()
        return 0 if cache is None else cache.consumed

    @property
    def window(self) -> Optional[int]:
        """The attention window of what the stepper holds (None before anything is consumed)."""
        if self._in_ring:
            return self.ring.window
        cache = self._state_cache()
        return None if cache is None else cache.window

    def held_tensors(self):
        """The tensors that hold the sequences' decoding state (the ring's buffers, or the incremental state's)."""
        held = list(self.ring.tensors()) if self.ring is not None else []
        for packed in self.state.values():
            held += [t for t in packed.values() if torch.is_tensor(t)]
        return held

    # ---------------------------------------------------------------------------------- helpers
    @property
    def _in_ring(self) -> bool:
        """Whether the ring holds the sequences (else the incremental state does, or nothing yet)."""
        return self.mode != "cache" and self.ring is not None and self.ring.consumed > 0

    def _state_cache(self) -> Optional[DecodingCache]:
        """What fairseq's incremental state (``self.state``) holds, or None while it holds nothing."""
        packed = self.decoder.get_incremental_state(self.state, "srupp_state") if self.state else None
        return DecodingCache.from_state(packed) if packed else None

    def _check_weights(self):
        """A captured graph reads the parameters where they were: moved or cast since, it would read freed
        memory, and the ring would hold the old dtype."""
        if weights_key(self.watched) != self.weights:
            raise ValueError("the model's parameters were moved or cast since this TokenStepper was made "
                             "(e.g. .to(), .half(), .cuda()): make a new TokenStepper")

    def _output(self, features: Tensor) -> Tensor:
        """(B, L, d) features → what this stepper returns: the output layer's values, or the features."""
        return features if self.outputs == "features" else self.decoder.output_layer(features)

    def _load_ring(self):
        """Move the prompt's state from fairseq's incremental state into the ring (made on first use)."""
        decoder = self.decoder
        cache = self._state_cache()
        # a new ring (and graph) when eval_window or the batch changed since the last one
        if self.ring is None or (self.ring.window, self.ring.batch) != (cache.window, self.batch):
            attends = decoder.attention_layers()
            srupp = decoder.srupp
            sizes = (cache.window, sum(attends), self.batch, srupp.num_heads, srupp.proj_size // srupp.num_heads,
                     srupp.num_layers, srupp.hidden_size, self.dtype, self.device)
            # the old ring, its handles and graph (with its memory pool) go first, so their memory is free
            self.ring = self.handles = self.graph = self.graph_output = None
            try:
                self.ring = RingCache(*sizes, growing_view=self.mode == "ring")  # eager: no fixed shapes to keep
            except torch.OutOfMemoryError as error:
                needed = ring_bytes(cache.window, sum(attends), self.batch, srupp.proj_size, srupp.num_layers,
                                    srupp.hidden_size, self.dtype)
                raise SRUppUserError(
                    "the decoding ring of {} sequences (window {}) needs {:.0f} MiB, more than the {} has free: "
                    "decode fewer sequences at once, lower eval_window, or set {}=cache (memory that grows with "
                    "the output)".format(self.batch, cache.window, needed / 2 ** 20, self.device.type.upper(),
                                         MODE_ENV)) from error
            self.handles = self.ring.layers(attends)
            self.graph_failure = self.graph_recurrence = None
        self.ring.load(cache)
        self.state = {}  # the ring holds it all now

    def _ring_step(self) -> Tensor:
        """One eager step through the ring: the exact sequence of kernels the graph replays."""
        decoder, ring = self.decoder, self.ring
        x = decoder.embed(self.tokens, fixed_shape=True)  # (1, B, d)
        pad = self.tokens[:, 0].eq(decoder.padding_idx)  # (B,): on the device, never read on the host
        ring.begin(pad)
        h, c, _ = decoder.srupp(x, c0=ring.c, mask_pad=pad.view(1, -1), caches=self.handles)
        ring.end(c)
        h = decoder.dropout_module(h).transpose(0, 1)  # (B, 1, d)
        return self._output(h)[:, 0]

    def _capture(self):
        """Capture :meth:`_ring_step` as a CUDA graph, or note why not and step eagerly from then on.

        First with the fused recurrence (CuPy's kernel); should that capture fail, once more with the
        recurrence's PyTorch reference, whose few elementwise kernels any capture takes (a single time
        step of it costs little inside a graph). The warm-up steps change the ring; it is restored after
        each attempt, so capturing consumes nothing."""
        saved = [t.clone() for t in self.ring.tensors()]
        failures = []
        for recurrence in RECURRENCES_TO_CAPTURE:
            try:
                with forced_implementation(recurrence):
                    self.graph, self.graph_output = self._capture_graph()
                self.graph_recurrence = recurrence or "fused"
            except Exception as error:  # an operation capture refuses (torch's or CuPy's error)
                failures.append("{} recurrence: {}: {}".format(
                    recurrence or "fused", type(error).__name__, str(error).splitlines()[0] if str(error) else ""))
            finally:
                for tensor, copy in zip(self.ring.tensors(), saved):
                    tensor.copy_(copy)
            if self.graph is not None:
                break
        self.capture_failures = failures
        if self.graph is None:
            self.graph_failure = "; ".join(failures)
            logger.warning("decoding without a CUDA graph (capture failed: %s); set %s=ring to skip the attempt",
                           self.graph_failure, MODE_ENV)
        elif failures:
            logger.warning("decoding with a CUDA graph of the recurrence's PyTorch reference (capture with the fused "
                           "kernel failed: %s)", failures[0])

    def _capture_graph(self):
        """(graph, its output tensor): warm-up steps on a side stream (cuBLAS workspaces, kernel compiles),
        as capture asks, then one step captured. The current stream waits for the side stream whatever
        happens, so nothing after it races the warm-up."""
        main = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(main)
        try:
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self._ring_step()
        finally:
            main.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = self._ring_step()
        return graph, output
