"""Convert the paper's enwik8 ``Model`` state dict (spec §5) into an ``srupp_lm`` state dict.

The paper's vocabulary is the sorted list of distinct bytes of the whole corpus (205 for enwik8,
newline included); a fairseq dictionary instead holds 4 special symbols and the byte tokens seen
in the training split, with the newline byte as ``</s>``. Rows of the embedding and of the output
layer are therefore re-indexed symbol by symbol:

    paper row of byte b  →  fairseq row of symbol str(b)   (b = 10 → ``</s>``)

fairseq symbols without a paper byte (``<s>``, ``<pad>``, ``<unk>``, bytes the paper never saw) get
a zero embedding, zero output weights and an output bias of ``NO_PROBABILITY``, so they take no
probability mass and the log-probabilities of real bytes equal the paper model's.
"""
import logging
from pathlib import Path
from typing import Dict, List, Sequence, Union

import torch
from torch import Tensor

from fairseq_srupp.data.char_level import byte_value
from fairseq_srupp.errors import SRUppUserError

from .common import NO_PROBABILITY, infer_rnn_config, strip_wrappers  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

# The paper's enwik8 evaluation: segments of 3072 bytes, each attending to the 3072 before it.
EVAL_WINDOW = 3072

PAPER_PREFIXES = {
    "embedding_layer.": "decoder.embed_tokens.",
    "rnn.": "decoder.srupp.",
    "output_layer.": "decoder.output_projection.",
}


def corpus_vocabulary(corpus: Union[str, Path]) -> List[int]:
    """The paper's vocabulary: sorted distinct bytes of the whole corpus file."""
    data = Path(corpus).read_bytes()
    if not data:  # torch.frombuffer refuses an empty buffer with a message about its own arguments
        raise SRUppUserError("the corpus {} is empty: pass the raw text the paper model was trained on (--corpus, "
                             "the enwik8 file), or its bytes with --vocab-bytes".format(corpus))
    counts = torch.bincount(torch.frombuffer(bytearray(data), dtype=torch.uint8).long(), minlength=256)
    return [b for b in range(256) if counts[b] > 0]


def infer_model_config(paper_state: Dict[str, Tensor]) -> Dict[str, object]:
    """Read sizes and flags of an ``srupp_lm`` off a paper state dict."""
    check_vocabulary_rows(paper_state)
    config = infer_rnn_config(paper_state)
    config["hidden_size"] = paper_state["embedding_layer.weight"].shape[1]
    return config


# The tensors with one row per paper vocabulary byte, and their number of dimensions.
VOCABULARY_TENSORS = {"embedding_layer.weight": 2, "output_layer.weight": 2, "output_layer.bias": 1}


def check_vocabulary_rows(paper_state: Dict[str, Tensor]) -> None:
    """The paper's embedding, output weight and output bias hold one row per vocabulary byte each:
    rows that disagree mean a damaged state dict or another model, whatever vocabulary is given."""
    for key, dims in VOCABULARY_TENSORS.items():
        if key not in paper_state:
            raise SRUppUserError("missing key in the paper state dict: {} (is it a complete checkpoint of the "
                                 "paper's Model?)".format(key))
        if paper_state[key].dim() != dims:
            raise SRUppUserError("{} of the paper state dict has shape {}, expected {} dimensions: the state dict is "
                                 "damaged or not the paper's enwik8 Model".format(
                                     key, tuple(paper_state[key].shape), dims))
    rows = {key: paper_state[key].shape[0] for key in VOCABULARY_TENSORS}
    if len(set(rows.values())) > 1:
        raise SRUppUserError(
            "the paper state dict's vocabulary tensors disagree: {}, but the paper's Model has one row per "
            "vocabulary byte in each: the state dict is damaged or not the paper's enwik8 Model".format(
                ", ".join("{} has {} rows".format(key, n) for key, n in rows.items())))


def remap_rows(
    paper_state: Dict[str, Tensor],
    vocabulary: Sequence[int],
    symbols: Sequence[str],
    allow_missing: bool = False,
) -> Dict[str, Tensor]:
    """Rename keys to ``srupp_lm``'s and re-index vocabulary rows for the fairseq ``symbols``."""
    check_vocabulary_rows(paper_state)
    emb = paper_state["embedding_layer.weight"]
    out_w = paper_state["output_layer.weight"]
    out_b = paper_state["output_layer.bias"]
    if emb.shape[0] != len(vocabulary):
        raise ValueError(
            "the state dict has {} vocabulary rows (embedding_layer.weight) but the paper vocabulary given has {} "
            "bytes: pass the corpus the model was trained on (--corpus)".format(emb.shape[0], len(vocabulary))
        )
    paper_row = {b: i for i, b in enumerate(vocabulary)}
    fairseq_bytes = [byte_value(s) for s in symbols]
    missing = sorted(set(vocabulary) - {b for b in fairseq_bytes if b is not None})
    if missing and not allow_missing:
        raise ValueError(
            "the fairseq dictionary lacks {} byte(s) of the paper vocabulary ({}): their probability "
            "would be lost. Build dict.txt from the whole corpus, or pass --allow-missing".format(
                len(missing), missing[:20]
            )
        )
    rows = torch.tensor([paper_row.get(b, -1) if b is not None else -1 for b in fairseq_bytes])
    present = rows >= 0
    new_emb = emb.new_zeros(len(symbols), emb.shape[1])
    new_out_w = out_w.new_zeros(len(symbols), out_w.shape[1])
    new_out_b = out_b.new_full((len(symbols),), NO_PROBABILITY)
    new_emb[present] = emb[rows[present]]
    new_out_w[present] = out_w[rows[present]]
    new_out_b[present] = out_b[rows[present]]
    unused = [s for s, p in zip(symbols, present.tolist()) if not p]
    logger.info("symbols with no paper byte (zero probability): %s", unused)

    state = {}
    for key, value in paper_state.items():
        prefix = next((p for p in PAPER_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            raise ValueError("unexpected key in the paper state dict: {}".format(key))
        state[PAPER_PREFIXES[prefix] + key[len(prefix):]] = value
    state["decoder.embed_tokens.weight"] = new_emb
    state["decoder.output_projection.weight"] = new_out_w
    state["decoder.output_projection.bias"] = new_out_b
    return state
