"""Convert the paper's word-level ``Model`` (WikiText-103, Billion Word) into ``srupp_lm`` + ``dict.txt``.

The paper's model (spec §3, §5): ``embedding_layer`` (projected adaptive input), ``rnn``
(``sru.SRUpp``) and ``output_layer`` (projected adaptive log-softmax). Its state dict holds

* ``output_layer.out_layers.{i}.weight/bias``: cluster i's table, Linear(e_i, size_i). The head
  (i = 0) has ``cutoffs[0] + n_tails`` rows: the shortlist, then one logit per tail cluster, with
  tail cluster j (1-based) in row ``head_rows - j`` (cluster 1 is the *last* row).
* ``output_layer.out_projs.{i}``: (n_d, e_i); the output computes ``hidden @ out_projs[i]``.
* ``embedding_layer.emb_projs.{i}``: (n_d, e_i), the input projections. On WikiText-103 they *are*
  ``out_projs`` (one shared ParameterList, so a state dict may hold both names with equal values);
  on Billion Word they are separate parameters. The input tables are ``out_layers[i].weight``
  (held in a plain list, so there are no ``embedding_layer.emb_weights`` keys).

Vocabulary. A fairseq :class:`~fairseq.data.Dictionary` starts with ``<s> <pad> </s> <unk>``
(0–3); the paper's has no such prefix. The converted dictionary is those four, then the paper's
words in paper order with the paper's end-of-sentence symbol (``<eos>`` on WikiText-103, ``<S>`` on
Billion Word) taken out and mapped to ``</s>``, and its unknown-word symbol (``<unk>`` / ``<UNK>``)
mapped to ``<unk>``. Both must lie in the head cluster, so every paper cluster stays contiguous and
keeps its size; only the head changes size. Example, paper cutoffs [10, 30], V 60, eos at paper
row 0 and unk at row 5::

    paper rows   0..9 (head)   10..29   30..59
    fairseq ids  0..11 (head)  12..31   32..61     head: <s> <pad> </s>=row 0 <unk>=row 5, rows 1-4, 6-9

so the converted cutoffs are [12, 32]. ``<s>`` and ``<pad>`` (and ``<unk>`` if the paper has no
unknown symbol) get zero table rows and the output bias ``NO_PROBABILITY``: they take no probability
and the log-probability of every paper word equals the paper model's.

``dict.txt`` lists the words from fairseq id 4 on, one per line, with a rank-derived count that
decreases strictly down the file (so even a re-sort by count would keep paper order). Data must be
binarized with this dictionary: ``fairseq-preprocess --only-source --srcdict OUT/dict.txt ...``.
"""
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from fairseq_srupp.data.vocab import EOS_ID, FAIRSEQ_SPECIALS, UNK_ID, read_vocab_lines
from fairseq_srupp.errors import SRUppUserError
from fairseq_srupp.modules.adaptive_softmax import cluster_widths

from .common import NO_PROBABILITY, RNN_PREFIX, infer_rnn_config, rename_rnn_key

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

OUT_LAYER = re.compile(r"^output_layer\.out_layers\.(\d+)\.(weight|bias)$")
OUT_PROJ = re.compile(r"^output_layer\.out_projs\.(\d+)$")
EMB_PROJ = re.compile(r"^embedding_layer\.emb_projs\.(\d+)$")


@dataclass(frozen=True)
class WordLevelDataset:
    """What the paper's scripts fix per data set (train_wt103.py / train_lm1b.py, data_utils.py)."""

    eos: str  # the symbol that ends (and, on Billion Word, also starts) a sentence
    unk: str  # the unknown-word symbol
    tied_projections: bool
    cutoffs: Tuple[int, ...]
    vocab_size: int
    eval_window: int
    dropout: float  # the training scripts' defaults, kept in the config for fine-tuning
    attn_dropout: float
    emb_dropout: float
    prepend_eos: bool = False  # the stream wraps every sentence in eos on both sides (--prepend-eos)


DATASETS: Dict[str, WordLevelDataset] = {
    # WikiText-103: vocabulary '<eos>' + training words by frequency; the corpus's own '<unk>' token
    # is an ordinary (frequent) word of that vocabulary.
    "wt103": WordLevelDataset("<eos>", "<unk>", True, (19997, 39997, 199997), 267735, 2560, 0.15, 0.15, 0.15),
    # Billion Word: vocabulary read from 1b_word_vocab.txt; sentences are wrapped in '<S>'.
    "lm1b": WordLevelDataset("<S>", "<UNK>", False, (59998, 159998), 793471, 96, 0.05, 0.0, 0.0, prepend_eos=True),
}


# --------------------------------------------------------------------------------- vocabulary
def read_vocab_file(path: PathLike) -> List[str]:
    """The paper's vocabulary from a file: the first field of every line, in file order.

    Accepts one token per line or ``token count`` lines (1b_word_vocab.txt). A token seen again is
    skipped, as the paper's vocabulary class does (it only adds symbols it does not have yet).
    """
    entries, repeated = read_vocab_lines(path, blank_lines=False)
    if repeated:
        logger.warning("%s: skipped %d repeated token(s), as the paper's vocabulary does", path, repeated)
    return [word for word, _ in entries]


def wt103_vocabulary(corpus: PathLike, specials: Sequence[str] = ("<eos>",)) -> List[str]:
    """Rebuild the paper's WikiText-103 vocabulary from the training text (``wiki.train.tokens``).

    As the paper's data pipeline (Transformer-XL's): the special symbols first, then every
    whitespace-separated token of the training file (case kept, no end-of-line symbol counted),
    by decreasing count; tokens of equal count in the order they first appear in the file
    (``Counter.most_common``'s stable sort).
    """
    counts: Counter = Counter()
    with open(str(corpus), "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                counts.update(raw.decode("utf-8").split())
            except UnicodeDecodeError as err:
                raise SRUppUserError("the corpus {} is not UTF-8 text (byte 0x{:02x} on line {}): pass "
                                     "wiki.train.tokens as released".format(corpus, raw[err.start], number)) from None
    if not counts:
        raise SRUppUserError("the corpus {} holds no words: pass the training text the paper model was trained on "
                             "(wiki.train.tokens)".format(corpus))
    vocab = list(dict.fromkeys(specials))
    present = set(vocab)
    for word, _ in sorted(counts.items(), key=lambda item: -item[1]):  # stable: ties keep first-seen order
        if word not in present:
            present.add(word)
            vocab.append(word)
    return vocab


def fairseq_vocabulary(
    words: Sequence[str], head_size: int, eos: str, unk: Optional[str]
) -> Tuple[List[str], List[int]]:
    """Fairseq symbols and, for each, the paper row it takes (-1: none).

    ``words`` is the paper vocabulary in paper order and ``head_size`` its shortlist size
    (``cutoffs[0]``). The paper's ``eos`` becomes ``</s>`` and ``unk`` (if present) ``<unk>``.
    """
    rows_of = {}
    for row, word in enumerate(words):
        if word in rows_of:
            raise ValueError("the paper vocabulary lists '{}' twice (rows {} and {})".format(word, rows_of[word], row))
        rows_of[word] = row
    if eos not in rows_of:
        raise ValueError(
            "the end-of-sentence symbol '{}' is not in the paper vocabulary: pass the vocabulary the model "
            "was trained with, or name its end-of-sentence symbol (--eos-symbol)".format(eos)
        )
    if unk is not None and unk not in rows_of:
        logger.warning(
            "the unknown-word symbol '%s' is not in the paper vocabulary: fairseq's <unk> gets no probability", unk
        )
        unk = None
    mapped = {eos: EOS_ID}
    if unk is not None:
        if unk == eos:
            raise ValueError("the end-of-sentence and unknown-word symbols must differ, both are '{}'".format(eos))
        mapped[unk] = UNK_ID
    for word, fairseq_id in mapped.items():
        if rows_of[word] >= head_size:
            raise ValueError(
                "the paper's '{}' (row {}) is not in the head cluster (rows 0..{}): fairseq's {} is in "
                "its head, so the clusters could not stay contiguous".format(
                    word, rows_of[word], head_size - 1, FAIRSEQ_SPECIALS[fairseq_id]
                )
            )
    clashes = [w for w in FAIRSEQ_SPECIALS if w in rows_of and w not in mapped]
    if clashes:
        raise ValueError(
            "paper word(s) {} are fairseq special symbols; name the paper's end-of-sentence / unknown "
            "symbols with --eos-symbol / --unk-symbol if they are these".format(clashes)
        )
    bad = [w for w in words if w != w.strip() or not w or len(w.split()) != 1]
    if bad:
        raise ValueError("paper word(s) containing whitespace cannot be written to dict.txt: {}".format(bad[:5]))
    symbols = list(FAIRSEQ_SPECIALS)
    rows = [-1, -1, rows_of[eos], rows_of[unk] if unk is not None else -1]
    for row, word in enumerate(words):
        if word not in mapped:
            symbols.append(word)
            rows.append(row)
    return symbols, rows


def write_dict(path: PathLike, symbols: Sequence[str]) -> Path:
    """``dict.txt`` for ``symbols`` (fairseq's 4 specials first, which the file leaves out)."""
    words = symbols[len(FAIRSEQ_SPECIALS):]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path), "w", encoding="utf-8") as f:
        for rank, word in enumerate(words):
            f.write("{} {}\n".format(word, len(words) - rank))
    return path


# ------------------------------------------------------------------------------ state dict
@dataclass
class PaperAdaptiveLayout:
    sizes: List[int]  # vocabulary rows of each cluster (head: shortlist only)
    widths: List[int]  # e_i
    model_dim: int  # n_d

    @property
    def cutoffs(self) -> List[int]:
        bounds = [sum(self.sizes[: i + 1]) for i in range(len(self.sizes))]
        return bounds[:-1]

    @property
    def vocab_size(self) -> int:
        return sum(self.sizes)


def _indices(paper_state: Mapping[str, Tensor], pattern) -> List[int]:
    return sorted({int(m.group(1)) for m in (pattern.match(k) for k in paper_state) if m})


def paper_adaptive_layout(paper_state: Mapping[str, Tensor]) -> PaperAdaptiveLayout:
    """Cluster sizes and widths from ``output_layer.out_layers.{i}``."""
    clusters = _indices(paper_state, OUT_LAYER)
    if not clusters:
        raise ValueError("no output_layer.out_layers.{i} keys: not a word-level (adaptive softmax) paper Model")
    if clusters != list(range(len(clusters))):
        raise ValueError("output_layer.out_layers indices {} are not consecutive from 0".format(clusters))
    for i in clusters:
        for part in ("weight", "bias"):
            if "output_layer.out_layers.{}.{}".format(i, part) not in paper_state:
                raise ValueError("missing key in the paper state dict: output_layer.out_layers.{}.{}".format(i, part))
    tables = [paper_state["output_layer.out_layers.{}.weight".format(i)] for i in clusters]
    n_tails = len(tables) - 1
    shortlist = tables[0].shape[0] - n_tails
    if shortlist < 1:
        raise ValueError(
            "the head output layer has {} rows, fewer than its {} cluster logits".format(tables[0].shape[0], n_tails)
        )
    sizes = [shortlist] + [t.shape[0] for t in tables[1:]]
    widths = [t.shape[1] for t in tables]
    projs = [k for k in paper_state if OUT_PROJ.match(k) or EMB_PROJ.match(k)]
    if not projs:
        raise ValueError("missing key in the paper state dict: output_layer.out_projs.0")
    return PaperAdaptiveLayout(sizes, widths, paper_state[projs[0]].shape[0])


def infer_div_value(widths: Sequence[int]) -> float:
    """A div_value with ``widths[i] == int(widths[0] // div_value**i)`` for every cluster."""
    if len(widths) == 1:
        return 4.0
    e0 = widths[0]
    # widths[i] = floor(e0 / div**i)  <=>  (e0 / (widths[i] + 1))**(1/i) < div <= (e0 / widths[i])**(1/i)
    low = max((e0 / (w + 1)) ** (1.0 / i) for i, w in enumerate(widths) if i > 0)
    high = min((e0 / w) ** (1.0 / i) if w > 0 else float("inf") for i, w in enumerate(widths) if i > 0)
    for candidate in (float(e0 / widths[1]) if widths[1] else None, high, (low + high) / 2):
        if candidate is not None and candidate > 1e-6 and candidate != float("inf"):
            try:
                if cluster_widths(e0, candidate, len(widths)) == list(widths):
                    return candidate
            except ValueError:
                pass
    raise ValueError(
        "cluster widths {} are not n_e // div**i for any div: srupp_lm's adaptive softmax cannot "
        "hold them".format(list(widths))
    )


def projections_of(
    paper_state: Mapping[str, Tensor], n_clusters: int, tied: bool
) -> Tuple[List[Tensor], Optional[List[Tensor]], Dict[int, str]]:
    """(output projections, input projections or None when tied, cluster → paper key used)."""
    out_idx = _indices(paper_state, OUT_PROJ)
    emb_idx = _indices(paper_state, EMB_PROJ)
    for name, idx in (("output_layer.out_projs", out_idx), ("embedding_layer.emb_projs", emb_idx)):
        extra = [i for i in idx if i >= n_clusters]
        if extra:
            raise ValueError(
                "unexpected key in the paper state dict: {}.{} ({} clusters)".format(name, extra[0], n_clusters)
            )
    outputs, inputs, used = [], [], {}
    for i in range(n_clusters):
        out_key = "output_layer.out_projs.{}".format(i)
        emb_key = "embedding_layer.emb_projs.{}".format(i)
        out = paper_state.get(out_key)
        emb = paper_state.get(emb_key)
        if tied:
            if out is None and emb is None:
                raise ValueError("missing key in the paper state dict: {} (or {})".format(out_key, emb_key))
            if out is not None and emb is not None and not torch.equal(out, emb):
                raise ValueError(
                    "{} and {} differ, but the projections are tied (WikiText-103 shares them): convert with "
                    "untied projections (--untied-projections) if this model kept them separate".format(
                        out_key, emb_key
                    )
                )
            outputs.append(out if out is not None else emb)
            used[i] = out_key if out is not None else emb_key
        else:
            for key, value in ((out_key, out), (emb_key, emb)):
                if value is None:
                    raise ValueError(
                        "missing key in the paper state dict: {} (untied projections need both input and output "
                        "projections; convert with --tied-projections if they are shared)".format(key)
                    )
            outputs.append(out)
            inputs.append(emb)
            used[i] = out_key
    return outputs, (None if tied else inputs), used


def projections_tied(paper_state: Mapping[str, Tensor]) -> bool:
    """Whether the state dict's input projections are its output ones (absent, or equal values)."""
    for i in _indices(paper_state, EMB_PROJ):
        out = paper_state.get("output_layer.out_projs.{}".format(i))
        if out is not None and not torch.equal(out, paper_state["embedding_layer.emb_projs.{}".format(i)]):
            return False
    return True


def choose_tied(paper_state: Mapping[str, Tensor], dataset_default: bool) -> bool:
    """Tie the projections when the state dict has one set (or two equal sets, unless the data set's
    paper model keeps them separate); untie them when it has two different sets."""
    if not _indices(paper_state, EMB_PROJ) or not _indices(paper_state, OUT_PROJ):
        return True
    if not projections_tied(paper_state):
        return False
    return dataset_default


def infer_word_level_config(
    paper_state: Mapping[str, Tensor], tied: bool
) -> Tuple[Dict[str, object], PaperAdaptiveLayout]:
    """``srupp_lm`` options (all but the vocabulary-dependent cutoffs) and the paper's cluster layout."""
    config = infer_rnn_config(paper_state)
    layout = paper_adaptive_layout(paper_state)
    if layout.model_dim != config["hidden_size"]:
        raise ValueError(
            "the adaptive softmax projects to {} but the SRU++ layers have hidden size {}".format(
                layout.model_dim, config["hidden_size"]
            )
        )
    config.update(
        adaptive_embed_dim=layout.widths[0],
        adaptive_div_value=infer_div_value(layout.widths),
        untie_adaptive_proj=not tied,
    )
    return config, layout


def remap_word_level(
    paper_state: Mapping[str, Tensor],
    layout: PaperAdaptiveLayout,
    rows: Sequence[int],
    tied: bool,
) -> Tuple[Dict[str, Tensor], List[int], Dict[str, str]]:
    """Rename and re-index the paper state dict for the fairseq vocabulary whose paper rows are ``rows``.

    Returns (srupp_lm state dict, fairseq cutoffs, converted key → paper key).
    """
    n_clusters = len(layout.sizes)
    shortlist = layout.sizes[0]
    head_f = len(rows) - (layout.vocab_size - shortlist)  # fairseq shortlist: specials + the paper head's other words
    cutoffs = [head_f + sum(layout.sizes[1:i]) for i in range(1, n_clusters)]

    for key in paper_state:
        if not key.startswith(RNN_PREFIX) and not any(p.match(key) for p in (OUT_LAYER, OUT_PROJ, EMB_PROJ)):
            raise ValueError("unexpected key in the paper state dict: {}".format(key))

    state: Dict[str, Tensor] = {}
    origins: Dict[str, str] = {}
    for key, value in paper_state.items():
        if key.startswith(RNN_PREFIX):
            state[rename_rnn_key(key)] = value
            origins[rename_rnn_key(key)] = key

    prefix = "decoder.adaptive_softmax."
    head_w = paper_state["output_layer.out_layers.0.weight"]
    head_b = paper_state["output_layer.out_layers.0.bias"]
    head_rows = torch.tensor(list(rows[:head_f]), dtype=torch.long)
    present = head_rows >= 0
    new_w = head_w.new_zeros(head_f, head_w.shape[1])
    new_b = head_b.new_full((head_f,), NO_PROBABILITY)
    new_w[present] = head_w[head_rows[present]]
    new_b[present] = head_b[head_rows[present]]
    state[prefix + "head.weight"], state[prefix + "head.bias"] = new_w, new_b
    origins[prefix + "head.weight"] = "output_layer.out_layers.0.weight"
    origins[prefix + "head.bias"] = "output_layer.out_layers.0.bias"
    # Paper head row (head_rows - j) is tail cluster j's logit; ours is cluster_logits row j - 1.
    if n_clusters > 1:
        state[prefix + "cluster_logits.weight"] = head_w[shortlist:].flip(0).clone()
        state[prefix + "cluster_logits.bias"] = head_b[shortlist:].flip(0).clone()
        origins[prefix + "cluster_logits.weight"] = "output_layer.out_layers.0.weight"
        origins[prefix + "cluster_logits.bias"] = "output_layer.out_layers.0.bias"
    # Tail clusters keep their rows: the specials all went to the head.
    start = shortlist
    for i in range(1, n_clusters):
        expected = list(range(start, start + layout.sizes[i]))
        first = cutoffs[i - 1]
        if list(rows[first : first + layout.sizes[i]]) != expected:
            raise ValueError("internal error: tail cluster {} is not contiguous after re-indexing".format(i))
        start += layout.sizes[i]
        for part in ("weight", "bias"):
            paper_key = "output_layer.out_layers.{}.{}".format(i, part)
            state["{}tails.{}.{}".format(prefix, i - 1, part)] = paper_state[paper_key]
            origins["{}tails.{}.{}".format(prefix, i - 1, part)] = paper_key

    outputs, inputs, used = projections_of(paper_state, n_clusters, tied)
    for i in range(n_clusters):
        state["{}projections.{}".format(prefix, i)] = outputs[i]
        origins["{}projections.{}".format(prefix, i)] = used[i]
        if inputs is not None:
            state["{}input_projections.{}".format(prefix, i)] = inputs[i]
            origins["{}input_projections.{}".format(prefix, i)] = "embedding_layer.emb_projs.{}".format(i)
    return state, cutoffs, origins
