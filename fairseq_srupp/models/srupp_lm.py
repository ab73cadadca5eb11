"""``srupp_lm``: the SRU++ language model as a fairseq model, with its architecture presets.

Char-level head (spec §3): Embedding(V, d) → dropout → SRU++ stack → dropout → Linear(d, V),
embedding and output weights untied and initialised U(±√(3/d)), output bias 0.
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.models import (
    FairseqIncrementalDecoder,
    FairseqLanguageModel,
    register_model,
    register_model_architecture,
)
from fairseq.utils import safe_getattr
from torch import Tensor, nn

from fairseq_srupp.modules import SRUpp

logger = logging.getLogger(__name__)

# Added to attention scores of masked positions, as the paper's scripts do.
MASKED_SCORE = -10000.0


@dataclass
class SRUppLMConfig(FairseqDataclass):
    # Defaults are the enwik8 base preset (spec §4); named architectures override them.
    hidden_size: int = field(default=3072, metadata={"help": "n_d: width of every layer's state c/h and of the embedding"})
    proj_size: int = field(default=768, metadata={"help": "n_proj: attention (projection) width"})
    num_layers: int = field(default=10, metadata={"help": "number of SRU++ layers"})
    num_heads: int = field(default=1, metadata={"help": "attention heads (must divide proj_size)"})
    attention_every_n_layers: int = field(
        default=1, metadata={"help": "layer i (0-based) has attention iff (i+1) %% n == 0; others project only"}
    )
    dropout: float = field(default=0.22, metadata={"help": "dropout of embeddings, outputs, sub-layers and the variational mask"})
    attn_dropout: float = field(default=0.22, metadata={"help": "dropout on attention probabilities"})
    # Booleans default to False because fairseq turns a True default into a store_false flag.
    no_layer_norm: bool = field(default=False, metadata={"help": "no LayerNorm in the SRU++ layers (on in every preset)"})
    normalize_after: bool = field(default=False, metadata={"help": "post-norm layers instead of pre-norm"})
    no_attn_layer_norm: bool = field(
        default=False, metadata={"help": "no LayerNorm inside the attention / projection block"}
    )
    highway_bias: float = field(default=-2.0, metadata={"help": "initial bias of the reset (highway) gate"})
    weight_c_init: float = field(default=1.0, metadata={"help": "v_f, v_r ~ U(-x, x) at init"})


def check_config(cfg) -> None:
    """Reject impossible sizes with a message that says what to change."""
    for name in ("hidden_size", "proj_size", "num_layers", "num_heads", "attention_every_n_layers"):
        if getattr(cfg, name) < 1:
            raise ValueError("--{} must be a positive integer, got {}".format(name.replace("_", "-"), getattr(cfg, name)))
    if cfg.proj_size % cfg.num_heads != 0:
        raise ValueError(
            "--proj-size ({}) must be divisible by --num-heads ({})".format(cfg.proj_size, cfg.num_heads)
        )
    for name in ("dropout", "attn_dropout"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            raise ValueError("--{} must be in [0, 1), got {}".format(name.replace("_", "-"), getattr(cfg, name)))


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


@dataclass
class CarriedState:
    """What one stream batch hands to its next segment, detached from the graph."""

    c: Tensor  # (num_layers, B, d)
    memory: List[Tensor]  # num_layers × (M, B, d_in): raw layer inputs of the previous segment
    memory_pad: Optional[Tensor]  # (M, B) bool or None


class SRUppDecoder(FairseqIncrementalDecoder):
    """Char-level SRU++ decoder.

    Input tokens (B, T) → logits (B, T, V). Internally time-major: (T, B, d).
    """

    def __init__(self, cfg: SRUppLMConfig, dictionary):
        super().__init__(dictionary)
        check_config(cfg)
        self.cfg = cfg
        d = cfg.hidden_size
        self.padding_idx = dictionary.pad()
        self.embed_tokens = nn.Embedding(len(dictionary), d, padding_idx=self.padding_idx)
        self.dropout_module = nn.Dropout(cfg.dropout)
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
        self.output_projection = nn.Linear(d, len(dictionary))
        self.reset_head_parameters()
        # Per carry key ("train", "valid", ...): state handed from one segment to the next. A plain
        # attribute, so it is neither a parameter nor part of the checkpoint.
        self.carried: Dict[str, CarriedState] = {}

    def reset_carried_state(self, key: Optional[str] = None):
        """Forget the carried state of ``key`` (all keys when None)."""
        if key is None:
            self.carried.clear()
        else:
            self.carried.pop(key, None)

    def reset_head_parameters(self):
        bound = (3.0 / self.cfg.hidden_size) ** 0.5
        with torch.no_grad():
            self.embed_tokens.weight.uniform_(-bound, bound)
            self.output_projection.weight.uniform_(-bound, bound)
            self.output_projection.bias.zero_()

    def forward(
        self,
        prev_output_tokens: Tensor,
        src_lengths: Optional[Tensor] = None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        features_only: bool = False,
        carry: Optional[Dict] = None,
        **kwargs,
    ):
        """prev_output_tokens (B, T) → (logits (B, T, V) or features (B, T, d), extra dict).

        ``carry`` (set by the ``srupp_language_modeling`` task) continues the previous segment of
        the same streams: ``{"key": str, "reset": bool, "enabled": bool, "mask": "causal" |
        "same_length", "window": int}``. Without it every call starts from zero state.
        """
        x, extra = self.extract_features(prev_output_tokens, incremental_state=incremental_state, carry=carry)
        if not features_only:
            x = self.output_layer(x)
        return x, extra

    def extract_features(self, prev_output_tokens: Tensor, incremental_state=None, carry=None, **kwargs):
        if incremental_state is not None:
            raise NotImplementedError("incremental decoding of srupp_lm is not implemented yet")
        tokens = prev_output_tokens
        if tokens.dim() != 2:
            raise ValueError("expected tokens of shape (batch, length), got {}".format(tuple(tokens.shape)))
        batch, length = tokens.shape
        x = self.dropout_module(self.embed_tokens(tokens)).transpose(0, 1)  # (T, B, d)
        pad = tokens.eq(self.padding_idx)
        mask_pad = pad.t() if pad.any() else None  # (T, B)

        carrying = carry is not None and carry.get("enabled", True)
        state = None
        if carrying:
            if carry.get("reset", False):
                self.reset_carried_state(carry["key"])
            state = self.carried.get(carry["key"])
            if state is not None and state.c.shape[1] != batch:
                raise ValueError(
                    "carried state of '{}' has {} streams but this segment has {}".format(
                        carry["key"], state.c.shape[1], batch
                    )
                )
        mem_len = state.memory[0].shape[0] if state is not None else 0
        if carry is not None and carry.get("mask") == "same_length":
            attn_mask = same_length_mask(length, mem_len, carry["window"], device=x.device, dtype=x.dtype)
        else:
            attn_mask = causal_mask(length, mem_len, device=x.device, dtype=x.dtype)
        h, c, saved_inputs = self.srupp(
            x,
            c0=None if state is None else state.c,
            mask_pad=mask_pad,
            attn_mask=attn_mask,
            memory=None if state is None else state.memory,
            memory_mask_pad=None if state is None else state.memory_pad,
        )
        if carrying:
            self.carried[carry["key"]] = CarriedState(
                c.detach(), [m.detach() for m in saved_inputs], None if mask_pad is None else mask_pad.detach()
            )
        h = self.dropout_module(h).transpose(0, 1)  # (B, T, d)
        return h, {"attn": [None], "inner_states": None}

    def output_layer(self, features: Tensor, **kwargs) -> Tensor:
        return self.output_projection(features)

    def max_positions(self) -> int:
        # Recurrence + attention over the segment: no positional limit of its own.
        return int(1e9)

    def reorder_incremental_state(self, incremental_state, new_order):
        raise NotImplementedError("incremental decoding of srupp_lm is not implemented yet")


@register_model("srupp_lm", dataclass=SRUppLMConfig)
class SRUppLanguageModel(FairseqLanguageModel):
    """SRU++ language model (Lei 2021). See ``fairseq_srupp/models/srupp_lm.py`` for presets."""

    @classmethod
    def build_model(cls, cfg: SRUppLMConfig, task):
        return cls(SRUppDecoder(cfg, task.target_dictionary))

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        own = self.decoder.embed_tokens.weight.shape[0]
        key = "decoder.embed_tokens.weight"
        if key in state_dict and state_dict[key].shape[0] != own:
            raise ValueError(
                "the checkpoint was trained with a dictionary of {} symbols but the task's dictionary "
                "has {}: point the data directory at the dict.txt the model was trained with".format(
                    state_dict[key].shape[0], own
                )
            )
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)


def _set_defaults(args, **defaults):
    for name, value in defaults.items():
        setattr(args, name, safe_getattr(args, name, value))


# `--arch srupp_lm` is registered by register_model itself and takes SRUppLMConfig's defaults,
# which are the enwik8 base preset; the presets below fill what they do not set from here.
def srupp_lm_enwik8_base(args):
    """enwik8 base: n_d 3072, n_proj 768, 10 layers, attention everywhere (107.6M params, V=205)."""
    _set_defaults(
        args,
        hidden_size=3072,
        proj_size=768,
        num_layers=10,
        num_heads=1,
        attention_every_n_layers=1,
        dropout=0.22,
        attn_dropout=0.22,
        no_layer_norm=False,
        normalize_after=False,
        no_attn_layer_norm=False,
        highway_bias=-2.0,
        weight_c_init=1.0,
    )


@register_model_architecture("srupp_lm", "srupp_lm_large")
def srupp_lm_enwik8_large(args):
    """enwik8 large as trained by the paper's command: n_d 4096, n_proj 1024 (190.7M, V=205)."""
    _set_defaults(args, hidden_size=4096, proj_size=1024, dropout=0.32, attn_dropout=0.32)
    srupp_lm_enwik8_base(args)


@register_model_architecture("srupp_lm", "srupp_lm_tiny")
def srupp_lm_tiny(args):
    """CPU-sized preset for demos and tests: n_d 256, n_proj 128, 4 layers (about 0.7M params)."""
    _set_defaults(args, hidden_size=256, proj_size=128, num_layers=4, dropout=0.1, attn_dropout=0.1)
    srupp_lm_enwik8_base(args)
