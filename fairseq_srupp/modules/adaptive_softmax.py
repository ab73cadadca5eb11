"""Projected adaptive input and adaptive log-softmax (Transformer-XL style), spec §3.

The vocabulary (ordered by frequency) is cut into clusters ``[0, c1), [c1, c2), …, [c_n, V)``.
Cluster i has its own embedding width ``e_i = n_e // div_value**i`` and a projection between
``e_i`` and the model width d, so rare words cost few parameters.

Worked example, V=10, cutoffs [4, 7], n_e=8, div_value=2 (widths 8, 4, 2)::

    cluster 0 (head) : tokens 0..3, table (4, 8), projection (d, 8)
    cluster 1 (tail) : tokens 4..6, table (3, 4), projection (d, 4)
    cluster 2 (tail) : tokens 7..9, table (3, 2), projection (d, 2)

Output: the head scores the 4 head tokens plus one logit per tail cluster (2 here),
log p(w) = log p_head(w) for a head token and log p_head(cluster of w) + log p_cluster(w)
otherwise. Input: the embedding of w is ``table_i[w - start_i] @ projection_iᵀ`` (width d).

The input tables *are* the softmax tables (tied, as in the paper). Projections are shared between
input and output unless ``untie_projections`` (the paper unties them on Billion Word).
"""
import math
from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dropout import Dropout


def parse_cutoffs(cutoffs, vocab_size: int) -> List[int]:
    """'19997,39997' or a sequence of ints → validated increasing list, each inside (0, vocab_size)."""
    if isinstance(cutoffs, str):
        try:
            values = [int(x) for x in cutoffs.replace(" ", "").split(",") if x]
        except ValueError:
            raise ValueError("--adaptive-softmax-cutoff must be comma-separated integers, got '{}'".format(cutoffs))
    else:
        values = [int(x) for x in cutoffs]
    if any(b <= a for a, b in zip(values, values[1:])) or (values and values[0] <= 0):
        raise ValueError("adaptive softmax cutoffs must be positive and increasing, got {}".format(values))
    if values and values[-1] >= vocab_size:
        raise ValueError(
            "the last adaptive softmax cutoff ({}) must be smaller than the dictionary size ({}): "
            "pass --adaptive-softmax-cutoff fitted to this dictionary".format(values[-1], vocab_size)
        )
    return values


def cluster_widths(embed_dim: int, div_value: float, num_clusters: int) -> List[int]:
    """e_i = n_e // div_value**i for i = 0 … num_clusters-1 (at least 1)."""
    widths = [int(embed_dim // (div_value ** i)) for i in range(num_clusters)]
    if min(widths) < 1:
        raise ValueError(
            "--adaptive-embed-dim {} with --adaptive-div-value {} leaves cluster widths {}: every cluster "
            "needs width >= 1".format(embed_dim, div_value, widths)
        )
    return widths


class ProjectedAdaptiveSoftmax(nn.Module):
    """Adaptive input embedding and adaptive log-softmax over one set of cluster tables.

    Args:
        vocab_size: V.
        model_dim: d, width of the model's hidden states (input and output of the adaptive layers).
        embed_dim: n_e, width of the head cluster.
        cutoffs: increasing cluster boundaries (list or comma-separated string).
        div_value: width divisor between consecutive clusters.
        dropout: dropout on the cluster embeddings (input) and on the projected hidden states
            (output) — the paper's ``emb_dropout``.
        untie_projections: separate input projections instead of sharing the output ones.
        embed_scale: multiply input embeddings by this (the paper uses √d when layer norm is off).

    Parameters: ``head`` (shortlist logits, weight (c1, e_0)), ``cluster_logits`` (one logit per
    tail cluster, weight (n, e_0)), ``tails[i-1]`` (weight (size_i, e_i)), ``projections[i]`` (d, e_i)
    and, untied, ``input_projections[i]`` (d, e_i).
    """

    def __init__(
        self,
        vocab_size: int,
        model_dim: int,
        embed_dim: int,
        cutoffs,
        div_value: float = 4.0,
        dropout: float = 0.0,
        untie_projections: bool = False,
        embed_scale: float = 1.0,
    ):
        super().__init__()
        self.vocab_size = vocab_size
        self.model_dim = model_dim
        self.cutoffs = parse_cutoffs(cutoffs, vocab_size)
        self.bounds = [0] + self.cutoffs + [vocab_size]
        self.num_tails = len(self.cutoffs)
        self.widths = cluster_widths(embed_dim, div_value, self.num_tails + 1)
        self.embed_scale = embed_scale
        self.dropout = Dropout(dropout, module_name=type(self).__name__)  # --retain-dropout aware
        shortlist = self.bounds[1]
        self.head = nn.Linear(self.widths[0], shortlist)
        self.cluster_logits = nn.Linear(self.widths[0], self.num_tails) if self.num_tails else None
        self.tails = nn.ModuleList(
            nn.Linear(self.widths[i], self.bounds[i + 1] - self.bounds[i]) for i in range(1, self.num_tails + 1)
        )
        self.projections = nn.ParameterList(nn.Parameter(torch.empty(model_dim, w)) for w in self.widths)
        self.input_projections = None
        if untie_projections:
            self.input_projections = nn.ParameterList(nn.Parameter(torch.empty(model_dim, w)) for w in self.widths)
        self.reset_parameters()

    def reset_parameters(self):
        # The paper: tables U(±√(3/d)), biases 0, projections xavier-uniform.
        bound = math.sqrt(3.0 / self.model_dim)
        with torch.no_grad():
            for layer in self.output_layers():
                layer.weight.uniform_(-bound, bound)
                layer.bias.zero_()
        for projections in (self.projections, self.input_projections):
            for p in projections if projections is not None else []:
                nn.init.xavier_uniform_(p)

    def output_layers(self) -> List[nn.Linear]:
        return [self.head] + ([self.cluster_logits] if self.cluster_logits is not None else []) + list(self.tails)

    def table(self, cluster: int) -> nn.Linear:
        """The Linear whose weight is cluster ``cluster``'s (size_i, e_i) table."""
        return self.head if cluster == 0 else self.tails[cluster - 1]

    # ----------------------------------------------------------------------------- input side
    def embed(self, tokens: Tensor) -> Tensor:
        """tokens (...) int64 → embeddings (..., d)."""
        projections = self.input_projections if self.input_projections is not None else self.projections
        flat = tokens.reshape(-1)
        out = None
        for i in range(self.num_tails + 1):
            start, end = self.bounds[i], self.bounds[i + 1]
            rows = ((flat >= start) & (flat < end)).nonzero().squeeze(1)
            if rows.numel() == 0 and out is not None:
                continue
            emb = F.embedding(flat.index_select(0, rows) - start, self.table(i).weight)  # (n_i, e_i)
            emb = F.linear(self.dropout(emb), projections[i])  # (n_i, d)
            if out is None:
                out = emb.new_zeros(flat.shape[0], self.model_dim)
            out = out.index_copy(0, rows, emb.to(out.dtype))
        if self.embed_scale != 1.0:
            out = out * self.embed_scale
        return out.view(*tokens.shape, self.model_dim)

    def embed_fixed_shape(self, tokens: Tensor) -> Tensor:
        """What :meth:`embed` returns, with shapes that do not depend on the tokens: every cluster embeds
        every token (its index clamped into the cluster) and keeps the rows that belong to it. No host
        synchronisation, so a CUDA graph can replay it; meant for the few tokens of a decoding step."""
        projections = self.input_projections if self.input_projections is not None else self.projections
        flat = tokens.reshape(-1)
        out = None
        for i in range(self.num_tails + 1):
            start, end = self.bounds[i], self.bounds[i + 1]
            inside = ((flat >= start) & (flat < end)).unsqueeze(1)  # (N, 1)
            emb = F.embedding((flat - start).clamp(0, end - start - 1), self.table(i).weight)
            emb = F.linear(self.dropout(emb), projections[i])  # (N, d)
            out = emb.masked_fill(~inside, 0) if out is None else torch.where(inside, emb.to(out.dtype), out)
        if self.embed_scale != 1.0:
            out = out * self.embed_scale
        return out.view(*tokens.shape, self.model_dim)

    # ---------------------------------------------------------------------------- output side
    def _cluster_scores(self, hidden: Tensor, cluster: int) -> Tensor:
        """hidden (N, d) → unnormalised scores (N, size) of one cluster (head: shortlist + tails)."""
        projected = self.dropout(F.linear(hidden, self.projections[cluster].t()))  # (N, e_i)
        if cluster > 0:
            return self.tails[cluster - 1](projected)
        scores = self.head(projected)
        if self.cluster_logits is not None:
            scores = torch.cat([scores, self.cluster_logits(projected)], dim=-1)
        return scores

    def target_log_prob(self, hidden: Tensor, target: Tensor) -> Tensor:
        """log p(target) without materialising the vocabulary.

        hidden (..., d), target (...) int64 → (...) float32. Targets outside [0, V) are an error.
        """
        shape = target.shape
        hidden = hidden.reshape(-1, hidden.shape[-1])
        target = target.reshape(-1)
        if hidden.shape[0] != target.shape[0]:
            raise ValueError("hidden has {} positions but target has {}".format(hidden.shape[0], target.shape[0]))
        shortlist = self.bounds[1]
        head = F.log_softmax(self._cluster_scores(hidden, 0).float(), dim=-1)  # (N, c1 + n)
        result = head.gather(1, target.clamp(max=shortlist - 1).unsqueeze(1)).squeeze(1)
        for i in range(1, self.num_tails + 1):
            start, end = self.bounds[i], self.bounds[i + 1]
            rows = ((target >= start) & (target < end)).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            tail = F.log_softmax(self._cluster_scores(hidden.index_select(0, rows), i).float(), dim=-1)
            within = tail.gather(1, (target.index_select(0, rows) - start).unsqueeze(1)).squeeze(1)
            result = result.index_copy(0, rows, head[rows, shortlist + i - 1] + within)
        return result.view(shape)

    def log_prob(self, hidden: Tensor) -> Tensor:
        """Full log-distribution: hidden (..., d) → (..., V) float32."""
        shape = hidden.shape[:-1]
        hidden = hidden.reshape(-1, hidden.shape[-1])
        shortlist = self.bounds[1]
        head = F.log_softmax(self._cluster_scores(hidden, 0).float(), dim=-1)
        parts = [head[:, :shortlist]]
        for i in range(1, self.num_tails + 1):
            tail = F.log_softmax(self._cluster_scores(hidden, i).float(), dim=-1)
            parts.append(head[:, shortlist + i - 1 : shortlist + i] + tail)
        return torch.cat(parts, dim=-1).view(*shape, self.vocab_size)

    def forward(self, *args, **kwargs):
        raise RuntimeError(
            "ProjectedAdaptiveSoftmax is not fairseq's AdaptiveSoftmax: train with "
            "--criterion srupp_adaptive_loss (fairseq's adaptive_loss cannot drive it)"
        )

    def extra_repr(self) -> str:
        return "vocab={}, d={}, cutoffs={}, widths={}, tied_projections={}".format(
            self.vocab_size, self.model_dim, self.cutoffs, self.widths, self.input_projections is None
        )

