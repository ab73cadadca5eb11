"""``srupp_lm``: the SRU++ language model as a fairseq model (its presets: ``presets.py``).

Char-level head (spec §3): Embedding(V, d) → dropout → SRU++ stack → dropout → Linear(d, V),
embedding and output weights untied and initialised U(±√(3/d)), output bias 0.

Word-level head (``--adaptive-softmax-cutoff``): projected adaptive input → dropout → SRU++ stack →
dropout → projected adaptive log-softmax, input tables tied to the softmax tables
(:class:`~fairseq_srupp.modules.adaptive_softmax.ProjectedAdaptiveSoftmax`). The decoder then
returns features (B, T, d) instead of logits; ``get_normalized_probs`` and
``target_log_probs`` turn them into exact log-probabilities.

Incremental decoding keeps, per layer, the cell state c and the attention keys/values of the last
``eval_window`` + 1 positions (a :class:`~fairseq_srupp.modules.decoding_cache.DecodingCache`), so
time and memory per generated token are bounded. Where its memory allows (``RING_MEMORY_SHARE``) the
decoder keeps a :class:`~fairseq_srupp.models.token_stepper.TokenStepper` in fairseq's incremental
state instead: a ring of the whole window, allocated once, and on a GPU one CUDA graph per token.
"""
import logging
import math
import os
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional

import torch.nn.functional as F

import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.models import (
    ARCH_MODEL_REGISTRY,
    MODEL_REGISTRY,
    FairseqIncrementalDecoder,
    FairseqLanguageModel,
    register_model,
    register_model_architecture,
)
from torch import Tensor, nn

from fairseq_srupp.errors import CheckpointMismatchError, SRUppUserError, env_choice
from fairseq_srupp.modules import Dropout, SRUpp
from fairseq_srupp.modules.adaptive_softmax import ProjectedAdaptiveSoftmax, cluster_widths, parse_cutoffs
from fairseq_srupp.modules.attention_masks import causal_mask  # noqa: F401  (imported from here by tests, benchmarks)
from fairseq_srupp.modules.attention_masks import same_length_mask, training_causal_mask
from fairseq_srupp.modules.decoding_cache import DecodingCache
from fairseq_srupp.modules.decoding_ring import ring_bytes, state_dtype
from fairseq_srupp.tasks.carried_state import CarriedState, CarriedStateStore, SegmentContext

from .token_stepper import MODE_ENV, MODES, TokenStepper, decoding_mode

from .presets import DEFAULT as DEFAULT_PRESET
from .presets import PRESETS

logger = logging.getLogger(__name__)

_BASE = DEFAULT_PRESET.values()

# fairseq's generators shrink the batch as sentences finish, and every batch size needs a graph of its
# own: a batch size is stepped eagerly this many times before its step is captured, so one that lasts
# only a few tokens costs no capture (warm-up and capture take about three eager steps).
GENERATOR_CAPTURE_AFTER = 4
# ``auto`` decodes through a ring (preallocated to the window) only if it takes at most this share of the
# memory still free on the model's device; else through the incremental state's cache, which grows with
# the output.
RING_MEMORY_SHARE = 0.25


@dataclass
class SRUppLMConfig(FairseqDataclass):
    # Defaults are the enwik8 base row of presets.PRESETS (spec §4); named architectures override them.
    hidden_size: int = field(default=_BASE["hidden_size"], metadata={"help": "n_d: width of every layer's state c/h and of the embedding"})
    proj_size: int = field(default=_BASE["proj_size"], metadata={"help": "n_proj: attention (projection) width"})
    num_layers: int = field(default=_BASE["num_layers"], metadata={"help": "number of SRU++ layers"})
    num_heads: int = field(default=_BASE["num_heads"], metadata={"help": "attention heads (must divide proj_size)"})
    attention_every_n_layers: int = field(
        default=_BASE["attention_every_n_layers"], metadata={"help": "layer i (0-based) has attention iff (i+1) %% n == 0; others project only"}
    )
    dropout: float = field(default=_BASE["dropout"], metadata={"help": "dropout of embeddings, outputs, sub-layers and the variational mask"})
    attn_dropout: float = field(default=_BASE["attn_dropout"], metadata={"help": "dropout on attention probabilities"})
    # Booleans default to False because fairseq turns a True default into a store_false flag.
    no_layer_norm: bool = field(default=_BASE["no_layer_norm"], metadata={"help": "no LayerNorm in the SRU++ layers (on in every preset)"})
    normalize_after: bool = field(default=_BASE["normalize_after"], metadata={"help": "post-norm layers instead of pre-norm"})
    no_attn_layer_norm: bool = field(
        default=_BASE["no_attn_layer_norm"], metadata={"help": "no LayerNorm inside the attention / projection block"}
    )
    highway_bias: float = field(default=_BASE["highway_bias"], metadata={"help": "initial bias of the reset (highway) gate"})
    weight_c_init: float = field(default=_BASE["weight_c_init"], metadata={"help": "v_f, v_r ~ U(-x, x) at init"})
    adaptive_softmax_cutoff: Optional[str] = field(
        default=_BASE["adaptive_softmax_cutoff"],
        metadata={"help": "comma-separated cluster boundaries of the projected adaptive input/softmax "
                  "(word level; wt103 19997,39997,199997, lm1b 59998,159998); unset: char-level Linear head"},
    )
    adaptive_embed_dim: int = field(default=_BASE["adaptive_embed_dim"], metadata={"help": "n_e: width of the head cluster's embeddings"})
    adaptive_div_value: float = field(default=_BASE["adaptive_div_value"], metadata={"help": "cluster i has width n_e // div_value**i"})
    untie_adaptive_proj: bool = field(
        default=_BASE["untie_adaptive_proj"], metadata={"help": "separate input and output cluster projections (the paper's lm1b)"}
    )
    emb_dropout: float = field(
        default=_BASE["emb_dropout"], metadata={"help": "dropout on adaptive cluster embeddings and projected hidden states"}
    )
    eval_window: int = field(
        default=_BASE["eval_window"],
        metadata={"help": "attention window W of incremental generation: each token attends to itself and the W "
                  "tokens before it (the paper's evaluation window: enwik8 3072, wt103 2560, lm1b 96)"},
    )


def free_memory(device: torch.device) -> int:
    """Bytes that can still be allocated on ``device``: on CUDA what the driver has free plus what torch's
    allocator holds unused; on the CPU the kernel's MemAvailable (1 GiB where /proc/meminfo is missing)."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2 ** 30


def check_config(cfg, vocab_size: Optional[int] = None) -> None:
    """Reject impossible sizes with a message that says what to change (an :class:`SRUppUserError`);
    with ``vocab_size`` (the dictionary's) also the adaptive softmax's cutoffs and widths."""
    _check_types(cfg)
    for name in ("hidden_size", "proj_size", "num_layers", "num_heads", "attention_every_n_layers"):
        if getattr(cfg, name) < 1:
            raise SRUppUserError(
                "--{} must be a positive integer, got {}".format(name.replace("_", "-"), getattr(cfg, name)))
    if cfg.proj_size % cfg.num_heads != 0:
        raise SRUppUserError(
            "--proj-size ({}) must be divisible by --num-heads ({})".format(cfg.proj_size, cfg.num_heads)
        )
    if cfg.eval_window < 1:
        raise SRUppUserError("--eval-window must be a positive integer, got {}".format(cfg.eval_window))
    if cfg.proj_size > cfg.hidden_size:
        logger.warning(
            "--proj-size %d is larger than --hidden-size %d: allowed, but off the paper's design, where the "
            "attention projection is a bottleneck (n_proj = n_d/4 or n_d/8)", cfg.proj_size, cfg.hidden_size
        )
    if cfg.attention_every_n_layers > cfg.num_layers:
        logger.warning("--attention-every-n-layers %d is more than --num-layers %d: no layer has attention",
                       cfg.attention_every_n_layers, cfg.num_layers)
    for name in ("dropout", "attn_dropout", "emb_dropout"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            raise SRUppUserError("--{} must be in [0, 1), got {}".format(name.replace("_", "-"), getattr(cfg, name)))
    # A NaN bias makes every gate NaN (fairseq's "gradients are Nan/Inf" after the first step); an
    # infinite one only saturates the gates, which is allowed.
    if math.isnan(cfg.highway_bias):
        raise SRUppUserError("--highway-bias must be a number (the reset gate's initial bias, e.g. -2), got nan")
    # v_f, v_r ~ U(-x, x): torch's uniform_ needs -x <= x, both finite
    if not 0.0 <= cfg.weight_c_init < math.inf:
        raise SRUppUserError("--weight-c-init must be a finite number >= 0 (v_f, v_r ~ U(-x, x) at init), "
                             "got {}".format(cfg.weight_c_init))
    if cfg.adaptive_softmax_cutoff and vocab_size is not None:
        _check_adaptive_config(cfg, vocab_size)


_KINDS = {int: "an integer", float: "a number", bool: "true or false"}


def _check_types(cfg) -> None:
    """The command line converts every setting to its type; a --model-overrides value (or a hand-edited
    checkpoint's) arrives as written, and a string where a size belongs failed as a TypeError."""
    for f in fields(SRUppLMConfig):
        value = getattr(cfg, f.name, None)
        if value is None or f.type not in _KINDS:
            continue
        if f.type is bool:
            fits = isinstance(value, bool)
        else:
            fits = isinstance(value, (int, float) if f.type is float else int) and not isinstance(value, bool)
        if not fits:
            flag = "--" + f.name.replace("_", "-")
            raise SRUppUserError("{} ({}) must be {}, got {!r} (a {}; --model-overrides values are taken as "
                                 "written)".format(flag, f.name, _KINDS[f.type], value, type(value).__name__))


def _check_adaptive_config(cfg, vocab_size: int) -> None:
    if cfg.adaptive_div_value <= 0:
        raise SRUppUserError("--adaptive-div-value must be > 0, got {}".format(cfg.adaptive_div_value))
    try:
        cutoffs = parse_cutoffs(cfg.adaptive_softmax_cutoff, float("inf"))
        cluster_widths(cfg.adaptive_embed_dim, cfg.adaptive_div_value, len(cutoffs) + 1)
    except ValueError as err:  # the module's own argument checks: the message names the flag
        raise SRUppUserError(str(err)) from None
    if cutoffs and cutoffs[-1] >= vocab_size:
        raise SRUppUserError(
            "--adaptive-softmax-cutoff {}: the last cutoff must be smaller than the dictionary size ({} symbols): "
            "fit the cutoffs to this dict.txt or, for a trained checkpoint, give the data directory it was trained "
            "with".format(cfg.adaptive_softmax_cutoff, vocab_size))


class SRUppDecoder(FairseqIncrementalDecoder):
    """SRU++ decoder.

    Input tokens (B, T) → logits (B, T, V) (char level) or features (B, T, d) (adaptive softmax).
    Internally time-major: (T, B, d).
    """

    def __init__(self, cfg: SRUppLMConfig, dictionary):
        super().__init__(dictionary)
        check_config(cfg, len(dictionary))
        self.cfg = cfg
        d = cfg.hidden_size
        self.padding_idx = dictionary.pad()
        self.embed_tokens = None
        self.output_projection = None
        self.adaptive_softmax = None
        if cfg.adaptive_softmax_cutoff:
            self.adaptive_softmax = ProjectedAdaptiveSoftmax(
                len(dictionary),
                d,
                cfg.adaptive_embed_dim,
                cfg.adaptive_softmax_cutoff,
                div_value=cfg.adaptive_div_value,
                dropout=cfg.emb_dropout,
                untie_projections=cfg.untie_adaptive_proj,
                # The paper scales the adaptive input by √d when the layers have no LayerNorm.
                embed_scale=d ** 0.5 if cfg.no_layer_norm else 1.0,
            )
        else:
            self.embed_tokens = nn.Embedding(len(dictionary), d, padding_idx=self.padding_idx)
            self.output_projection = nn.Linear(d, len(dictionary))
        self.dropout_module = Dropout(cfg.dropout, module_name=type(self).__name__)  # --retain-dropout aware
        self.srupp = SRUpp(
            d,
            d,
            cfg.proj_size,
            num_layers=cfg.num_layers,
            dropout=cfg.dropout,
            attn_dropout=cfg.attn_dropout,
            num_heads=cfg.num_heads,
            layer_norm=not cfg.no_layer_norm,
            normalize_after=cfg.normalize_after,
            attn_layer_norm=not cfg.no_attn_layer_norm,
            highway_bias=cfg.highway_bias,
            attention_every_n_layers=cfg.attention_every_n_layers,
            weight_c_init=cfg.weight_c_init,
        )
        self.reset_head_parameters()
        # State handed from one segment to the next, per key ("train", "valid", ...).
        self.carried = CarriedStateStore()

    def reset_carried_state(self, key: Optional[str] = None):
        """Forget the carried state of ``key`` (all keys when None)."""
        self.carried.reset(key)

    def reset_head_parameters(self):
        if self.adaptive_softmax is not None:
            self.adaptive_softmax.reset_parameters()
            return
        bound = (3.0 / self.cfg.hidden_size) ** 0.5
        with torch.no_grad():
            self.embed_tokens.weight.uniform_(-bound, bound)
            self.output_projection.weight.uniform_(-bound, bound)
            self.output_projection.bias.zero_()

    def embed(self, tokens: Tensor, fixed_shape: bool = False) -> Tensor:
        """tokens (B, T) → dropout(embeddings) (T, B, d). ``fixed_shape``: the adaptive input computes
        without data-dependent shapes (:meth:`ProjectedAdaptiveSoftmax.embed_fixed_shape`), for CUDA graphs."""
        if tokens.dim() != 2:
            raise ValueError("expected tokens of shape (batch, length), got {}".format(tuple(tokens.shape)))
        if self.adaptive_softmax is not None and fixed_shape:
            x = self.adaptive_softmax.embed_fixed_shape(tokens)
        elif self.adaptive_softmax is not None:
            x = self.adaptive_softmax.embed(tokens)
        else:
            x = self.embed_tokens(tokens)
        return self.dropout_module(x).transpose(0, 1)

    def forward(
        self,
        prev_output_tokens: Tensor,
        src_lengths: Optional[Tensor] = None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        features_only: bool = False,
        segment: Optional[SegmentContext] = None,
        carry: Optional[Dict] = None,
        **kwargs,
    ):
        """prev_output_tokens (B, T) → (logits (B, T, V) or features (B, T, d), extra dict).

        With the adaptive softmax the "logits" are the features: use ``get_normalized_probs`` or
        ``target_log_probs``.

        ``segment`` (set by the ``srupp_language_modeling`` task, see
        :mod:`fairseq_srupp.tasks.carried_state`) gives the attention mask and the carried state
        the segment continues. Without it the call uses the causal mask and starts from zero state.
        ``carry``: the dict of earlier versions, converted by ``SegmentContext.from_legacy_dict``.

        ``incremental_state`` (generation): pass the whole prefix (the suffix not consumed yet is
        new: fairseq's generators) or only the newest token; anything else is rejected.
        """
        if segment is None and carry is not None:
            segment = SegmentContext.from_legacy_dict(carry)
        x, extra = self.extract_features(prev_output_tokens, incremental_state=incremental_state, segment=segment)
        if not features_only:
            x = self.output_layer(x)
        return x, extra

    def extract_features(self, prev_output_tokens: Tensor, incremental_state=None,
                         segment: Optional[SegmentContext] = None, **kwargs):
        if incremental_state is not None:
            return self._extract_features_incremental(prev_output_tokens, incremental_state)
        tokens = prev_output_tokens
        x = self.embed(tokens)  # (T, B, d)
        length, batch = x.shape[:2]
        pad = tokens.eq(self.padding_idx)
        # Eager skips an all-False mask (cheaper attention and recurrence); a compiled graph cannot
        # branch on tensor values, so it always passes the mask (same results).
        mask_pad = pad.t() if torch.compiler.is_compiling() or pad.any() else None  # (T, B)

        segment = segment or SegmentContext()
        key = segment.state
        if key is not None and segment.reset:
            self.carried.reset(key)
        state = None if key is None else self.carried.get(key)
        if state is not None and state.streams != batch:
            raise ValueError(
                "carried state of '{}' has {} streams but this segment has {}".format(key, state.streams, batch)
            )
        mem_len = state.memory[0].shape[0] if state is not None else 0
        if segment.mask == "same_length":
            attn_mask = same_length_mask(length, mem_len, segment.window, device=x.device, dtype=x.dtype)
        else:
            # On CUDA a structure, not a tensor (unless FAIRSEQ_SRUPP_ATTENTION=additive), so attention
            # can use the flash / memory-efficient kernels; the stack builds the tensor where it must.
            attn_mask = training_causal_mask(length, mem_len, device=x.device, dtype=x.dtype)
        h, c, saved_inputs = self.srupp(
            x,
            c0=None if state is None else state.c,
            mask_pad=mask_pad,
            attn_mask=attn_mask,
            memory=None if state is None else state.memory,
            memory_mask_pad=None if state is None else state.memory_pad,
        )
        if key is not None and segment.release:
            self.carried.reset(key)
        elif key is not None:
            self.carried.put(key, CarriedState(
                c.detach(), [m.detach() for m in saved_inputs], None if mask_pad is None else mask_pad.detach()
            ))
        h = self.dropout_module(h).transpose(0, 1)  # (B, T, d)
        return h, {"attn": [None], "inner_states": None}

    # --------------------------------------------------------------------- incremental decoding
    # fairseq's incremental state holds one entry for this decoder, "srupp_state": a DecodingCache
    # packed by its to_state() (cell states, the attention layers' keys/values of the last
    # eval_window + 1 positions, their padding, counters).

    def _extract_features_incremental(self, tokens: Tensor, incremental_state):
        stepper = self._stepper(incremental_state)
        packed = self.get_incremental_state(incremental_state, "srupp_state")
        if stepper is None and not packed:  # a new incremental state: the decoding mode is chosen once, here
            stepper = self._new_stepper(tokens.shape[0], incremental_state)
        if stepper is not None:
            self._check_window(stepper.window)
            new_tokens = self._new_tokens(tokens, stepper.consumed, stepper.batch)
            if new_tokens.shape[1] == 1 and stepper.consumed > 0:
                return stepper.step(new_tokens[:, 0]).unsqueeze(1), {"attn": [None], "inner_states": None}
            return stepper.feed(new_tokens), {"attn": [None], "inner_states": None}
        cache = DecodingCache.from_state(packed) if packed else None
        new_tokens = self._new_tokens(tokens, 0 if cache is None else cache.consumed,
                                      None if cache is None or cache.c is None else cache.c.shape[1])
        return self.decode_new_tokens(new_tokens, incremental_state), {"attn": [None], "inner_states": None}

    def decode_new_tokens(self, tokens: Tensor, incremental_state) -> Tensor:
        """Consume exactly ``tokens`` (B, L), continuing what ``incremental_state`` holds (a
        :class:`DecodingCache`, made on the first call), and return the features (B, L, d)."""
        packed = self.get_incremental_state(incremental_state, "srupp_state")
        if packed:
            cache = DecodingCache.from_state(packed)
            self._check_window(cache.window)
        else:
            cache = DecodingCache(self.cfg.eval_window, sum(self.attention_layers()))
        x = self.embed(tokens)  # (L, B, d)
        pad = tokens.eq(self.padding_idx)
        pad = pad if pad.any() else None  # the step's only host synchronisation
        cache.begin(tokens.shape[1], pad)
        # Cell states carried in fp32 (fp64 for a fp64 model) between calls, as the fused recurrence
        # carries them inside a sequence, whatever the activations are stored in.
        c0 = cache.c if cache.c is not None else x.new_zeros(
            (self.cfg.num_layers, x.shape[1], self.cfg.hidden_size), dtype=state_dtype(x.dtype))
        h, c, _ = self.srupp(
            x,
            c0=c0,
            mask_pad=None if pad is None else pad.t(),
            caches=cache.layers(self.attention_layers()),
        )
        cache.end(c)
        self.set_incremental_state(incremental_state, "srupp_state", cache.to_state())
        return self.dropout_module(h).transpose(0, 1)

    def _check_window(self, window: Optional[int]) -> None:
        if window is not None and window != self.cfg.eval_window:
            raise ValueError("eval_window changed from {} to {} during incremental decoding: start from a new "
                             "incremental state".format(window, self.cfg.eval_window))

    def _stepper(self, incremental_state):
        held = self.get_incremental_state(incremental_state, "srupp_stepper")
        return None if not held else held["stepper"]

    def _new_stepper(self, batch: int, incremental_state):
        """A TokenStepper (a ring of the whole window; a CUDA graph per token on a GPU) for a new incremental
        state, or None where the DecodingCache serves: ``cache`` mode, ``auto`` where the ring would not fit
        in memory, and any call that may need gradients or dropout (a ring's step has neither)."""
        if self.training or torch.is_grad_enabled():
            return None
        weight = next(self.srupp.parameters())
        requested = env_choice(MODE_ENV, MODES)
        mode = decoding_mode(weight.device, requested)
        if mode == "cache" or (requested == "auto" and not self._ring_fits(batch, weight)):
            return None
        stepper = TokenStepper(self, batch, mode=mode, outputs="features", capture_after=GENERATOR_CAPTURE_AFTER)
        self.set_incremental_state(incremental_state, "srupp_stepper", {"stepper": stepper})
        return stepper

    def _ring_fits(self, batch: int, weight: Tensor) -> bool:
        """Whether a ring for ``batch`` sequences takes at most RING_MEMORY_SHARE of the memory still free
        on the model's device. The ring holds the whole window from the first token, where the cache grows
        as it fills: for many short outputs (``fairseq-generate`` over a test set) the cache is what fits."""
        cfg = self.cfg
        needed = ring_bytes(cfg.eval_window, sum(self.attention_layers()), batch, cfg.proj_size, cfg.num_layers,
                            cfg.hidden_size, weight.dtype)
        free = free_memory(weight.device)
        if needed <= RING_MEMORY_SHARE * free:
            return True
        if not getattr(self, "_told_ring_too_big", False):
            logger.info("decoding %d sequences through fairseq's incremental state, not a fixed ring: the ring "
                        "would take %.0f MiB of the %.0f MiB free (set %s=ring to use it anyway)",
                        batch, needed / 2 ** 20, free / 2 ** 20, MODE_ENV)
            self._told_ring_too_big = True
        return False

    def attention_layers(self) -> List[bool]:
        """Per layer of the stack, whether it attends (and so has keys/values to cache)."""
        return [hasattr(layer.transform_module, "forward_incremental") for layer in self.srupp.rnn_lst]

    @staticmethod
    def _new_tokens(tokens: Tensor, consumed: int, batch: Optional[int]) -> Tensor:
        """The tokens (B, L) a call brings that the incremental state (``consumed`` tokens of ``batch``
        sequences so far) has not consumed yet.

        A call passes either the whole prefix, longer than what was consumed (fairseq's generators:
        the new tokens are the suffix), or only the newest token. Anything else (several tokens,
        but no more than were consumed) cannot be told apart from a shorter prefix: rejected.
        """
        if tokens.dim() != 2:
            raise ValueError("expected tokens of shape (batch, length), got {}".format(tuple(tokens.shape)))
        if batch is not None and tokens.shape[0] != batch:
            raise ValueError(
                "the incremental state holds {} sequences but {} were passed: reorder it with "
                "reorder_incremental_state, or start from a new one".format(batch, tokens.shape[0])
            )
        length = tokens.shape[1]
        if length > consumed:
            return tokens[:, consumed:]
        if length == 1:
            return tokens
        raise ValueError(
            "incremental decoding got {} tokens after consuming {}: pass the whole prefix (more than {} "
            "tokens, the new ones last) or only the newest token".format(length, consumed, consumed)
        )

    def reorder_incremental_state(self, incremental_state, new_order: Tensor):
        stepper = self._stepper(incremental_state)
        if stepper is not None:
            stepper.reorder(new_order)
            return
        packed = self.get_incremental_state(incremental_state, "srupp_state")
        if not packed:
            return
        cache = DecodingCache.from_state(packed)
        cache.reorder(new_order)
        self.set_incremental_state(incremental_state, "srupp_state", cache.to_state())

    # ------------------------------------------------------------------------------- outputs
    def output_layer(self, features: Tensor, **kwargs) -> Tensor:
        if self.adaptive_softmax is not None:
            return features
        return self.output_projection(features)

    def get_normalized_probs(self, net_output, log_probs: bool, sample=None):
        """Full distribution (B, T, V), exact also for the adaptive softmax."""
        if self.adaptive_softmax is None:
            return super().get_normalized_probs(net_output, log_probs, sample)
        out = self.adaptive_softmax.log_prob(net_output[0])
        return out if log_probs else out.exp()

    def target_log_probs(self, net_output, target: Tensor) -> Tensor:
        """log p(target) (B, T) in float32, without materialising the vocabulary when adaptive."""
        if self.adaptive_softmax is not None:
            return self.adaptive_softmax.target_log_prob(net_output[0], target)
        lprobs = F.log_softmax(net_output[0].float(), dim=-1)
        return lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)

    def max_positions(self) -> int:
        # Recurrence + attention over the segment: no positional limit of its own.
        return int(1e9)


def checkpoint_vocab_size(state_dict) -> Optional[int]:
    """Dictionary size a srupp_lm state dict was trained with (None if it cannot tell)."""
    if "decoder.embed_tokens.weight" in state_dict:
        return state_dict["decoder.embed_tokens.weight"].shape[0]
    prefix = "decoder.adaptive_softmax."
    rows = [v.shape[0] for k, v in state_dict.items() if k.startswith(prefix) and k.endswith(".weight")
            and (k.startswith(prefix + "head.") or k.startswith(prefix + "tails."))]
    return sum(rows) if rows else None


def checkpoint_model_name(path: str) -> Optional[str]:
    """The model (or --arch) name a fairseq checkpoint was saved with; SRUppUserError when ``path`` is
    not a fairseq checkpoint."""
    try:
        # mmap: only the pickled structure is read, not the tensors.
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as exc:
        raise SRUppUserError("{} is not a PyTorch checkpoint ({}: {})".format(path, type(exc).__name__, exc)) from None
    cfg, args = (state.get("cfg"), state.get("args")) if isinstance(state, dict) else (None, None)
    if cfg is not None and cfg.get("model") is not None:
        name = cfg["model"].get("_name")
    elif args is not None:
        name = getattr(args, "arch", None)
    else:
        from ..tasks.resume import side_file_checkpoint  # here: the tasks import this module

        owner = side_file_checkpoint(path)
        if owner is not None:  # a tab completion away from its checkpoint
            raise SRUppUserError("{} is the carried recurrent state saved beside the checkpoint {} (read when "
                                 "training resumes from it), not a checkpoint: give {}".format(path, owner, owner))
        raise SRUppUserError(
            "{} is not a fairseq checkpoint (no 'cfg' or 'args'; top-level keys: {}); the paper's released "
            "checkpoints must be converted first: python -m fairseq_srupp.convert".format(
                path, sorted(state)[:8] if isinstance(state, dict) else type(state).__name__)
        )
    return name


def check_checkpoint_architecture(path: str, cls) -> None:
    """Raise SRUppUserError unless ``path`` is a fairseq checkpoint of a ``cls`` model."""
    name = checkpoint_model_name(path)
    found = MODEL_REGISTRY.get(name) or ARCH_MODEL_REGISTRY.get(name)
    if found is None or not issubclass(found, cls):
        raise SRUppUserError(
            "{} holds a '{}' model ({}), not srupp_lm: load it with that model's own class".format(
                path, name, found.__name__ if found is not None else "not registered")
        )


@register_model("srupp_lm", dataclass=SRUppLMConfig)
class SRUppLanguageModel(FairseqLanguageModel):
    """SRU++ language model (Lei 2021). Its presets: ``fairseq_srupp/models/presets.py``."""

    @classmethod
    def build_model(cls, cfg: SRUppLMConfig, task):
        return cls(SRUppDecoder(cfg, task.target_dictionary))

    @classmethod
    def from_pretrained(cls, model_name_or_path, checkpoint_file="model.pt", data_name_or_path=".", **kwargs):
        """fairseq's hub loader, refusing checkpoints that hold another architecture (fairseq would
        silently build that model instead)."""
        for name in checkpoint_file.split(os.pathsep):
            path = os.path.join(model_name_or_path, name)
            if os.path.isfile(path):
                check_checkpoint_architecture(path, cls)
        return super().from_pretrained(model_name_or_path, checkpoint_file, data_name_or_path, **kwargs)

    def prepare_for_inference_(self, cfg):
        """fairseq's preparation for generation and scoring, refusing a ``--retain-dropout-modules`` that selects
        none of this model's dropouts (fairseq would keep none on, without a word)."""
        generation = getattr(cfg, "generation", None)
        selected = getattr(generation, "retain_dropout_modules", None)
        if getattr(generation, "retain_dropout", False) and selected:
            own = sorted({m.module_name for m in self.modules() if isinstance(m, Dropout)})
            # as Dropout.make_generation_fast_ (and fairseq's FairseqDropout) select: `module_name in` the value,
            # a list of names or, from the command line, one string
            if not any(name in selected for name in own):
                raise SRUppUserError("--retain-dropout-modules {}: selects none of srupp_lm's dropouts, which are in "
                                     "{}".format(selected, ", ".join(own)))
        super().prepare_for_inference_(cfg)

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        own = len(self.decoder.dictionary)
        theirs = checkpoint_vocab_size(state_dict)
        if theirs is not None and theirs != own:
            raise SRUppUserError(
                "the checkpoint was trained with a dictionary of {} symbols but the task's dictionary "
                "has {}: point the data directory at the dict.txt the model was trained with".format(theirs, own)
            )
        if (self.decoder.adaptive_softmax is None) != ("decoder.embed_tokens.weight" in state_dict):
            raise SRUppUserError(
                "the checkpoint's output layer ({}) does not match this model's ({}): build the model "
                "with the checkpoint's own configuration".format(
                    "Linear" if "decoder.embed_tokens.weight" in state_dict else "adaptive softmax",
                    "adaptive softmax" if self.decoder.adaptive_softmax is not None else "Linear",
                )
            )
        try:
            return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)
        except RuntimeError:
            # torch refused it (after fairseq's upgrade of old keys): say which parameters differ
            check_state_dict_fits(self.state_dict(), state_dict)
            raise


def check_state_dict_fits(own: Dict[str, Tensor], theirs: Dict[str, Tensor]) -> None:
    """Raise CheckpointMismatchError naming the first parameters a checkpoint lacks, adds or sizes differently
    (torch's strict load lists all of them, and fairseq-train hides even that behind "please ensure
    that the architectures match")."""
    missing = [k for k in own if k not in theirs]
    unexpected = [k for k in theirs if k not in own]
    resized = ["{} {} (here {})".format(k, tuple(theirs[k].shape), tuple(v.shape)) for k, v in own.items()
               if k in theirs and torch.is_tensor(theirs[k]) and theirs[k].shape != v.shape]
    if not (missing or unexpected or resized):
        return
    found = []
    for what, keys in (("of another size", resized), ("missing", missing), ("unexpected", unexpected)):
        if keys:
            found.append("{} {}: {}{}".format(len(keys), what, ", ".join(keys[:2]), ", ..." if len(keys) > 2 else ""))
    raise CheckpointMismatchError(
        "the checkpoint's parameters do not fit this srupp_lm ({}): build the model with the checkpoint's own "
        "sizes (--hidden-size, --proj-size, --num-layers, ...) or start a new run in another --save-dir".format(
            "; ".join(found)))


# `--arch srupp_lm` is registered by register_model itself and takes SRUppLMConfig's defaults (the
# enwik8 base row); every other preset's --arch function comes from its row of presets.PRESETS.
for _preset in PRESETS:
    for _arch in _preset.arch_names:
        if _arch != "srupp_lm":
            register_model_architecture("srupp_lm", _arch)(_preset.fill_args)
