"""Converters from other SRU++ implementations to ``srupp_lm`` fairseq checkpoints.

* ``sru.SRUpp`` state dicts load directly into :class:`fairseq_srupp.modules.SRUpp`
  (same parameter names): ``module.load_state_dict(sru_model.state_dict())``.
* The paper's enwik8 ``Model`` (``embedding_layer``, ``rnn``, ``output_layer``) converts with
  :func:`convert_enwik8` or ``python -m fairseq_srupp.convert enwik8 ...``.
"""
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from .checkpoint import build_cfg, save_fairseq_checkpoint
from .enwik8 import corpus_vocabulary, infer_model_config, remap_rows, strip_wrappers

__all__ = ["convert_enwik8", "corpus_vocabulary", "infer_model_config", "remap_rows"]

PathLike = Union[str, Path]


def convert_enwik8(
    paper_checkpoint: PathLike,
    dict_path: PathLike,
    out_path: PathLike,
    corpus: Optional[PathLike] = None,
    vocabulary: Optional[Sequence[int]] = None,
    num_heads: int = 1,
    allow_missing: bool = False,
) -> Path:
    """Convert a paper enwik8 state dict to a fairseq ``srupp_lm`` checkpoint at ``out_path``.

    Args:
        paper_checkpoint: ``torch.save``d state dict of the paper's ``Model``.
        dict_path: the ``dict.txt`` of the fairseq-binarized byte-level data the checkpoint will
            be used with; its directory becomes the checkpoint's task data.
        corpus: the raw corpus the paper model was trained on (its sorted distinct bytes are the
            paper's vocabulary), or give ``vocabulary`` directly.
        num_heads: attention heads (not recoverable from weight shapes; 1 in every preset).
        allow_missing: accept a dictionary lacking some of the paper's bytes.
    """
    from fairseq.data import Dictionary

    if (corpus is None) == (vocabulary is None):
        raise ValueError("give exactly one of corpus (the raw training text) or vocabulary (byte values)")
    vocab = list(vocabulary) if vocabulary is not None else corpus_vocabulary(corpus)
    dict_path = Path(dict_path)
    if not dict_path.is_file():
        raise FileNotFoundError("no fairseq dictionary at {}".format(dict_path))
    dictionary = Dictionary.load(str(dict_path))
    paper_state = strip_wrappers(torch.load(str(paper_checkpoint), map_location="cpu", weights_only=True))
    overrides = infer_model_config(paper_state)
    overrides["num_heads"] = num_heads
    state = remap_rows(paper_state, vocab, dictionary.symbols, allow_missing=allow_missing)
    cfg = build_cfg(dict_path.parent, "srupp_lm", overrides)
    out_path = Path(out_path)
    save_fairseq_checkpoint(out_path, cfg, state)
    return out_path
