"""Converters from other SRU++ implementations to ``srupp_lm`` fairseq checkpoints.

* ``sru.SRUpp`` state dicts load directly into :class:`fairseq_srupp.modules.SRUpp`
  (same parameter names): ``module.load_state_dict(sru_model.state_dict())``.
* The paper's enwik8 ``Model`` (``embedding_layer``, ``rnn``, ``output_layer``) converts with
  :func:`convert_enwik8` or ``python -m fairseq_srupp.convert enwik8 ...``.
* The paper's WikiText-103 / Billion Word ``Model`` (projected adaptive input and softmax) converts
  with :func:`convert_word_level` or ``python -m fairseq_srupp.convert wt103|lm1b ...``, which also
  writes the ``dict.txt`` the data must be binarized with.
"""
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

from .checkpoint import build_cfg, save_fairseq_checkpoint
from .common import check_against_model, check_num_heads, load_fairseq_dictionary, load_paper_state
from .enwik8 import EVAL_WINDOW, PAPER_PREFIXES, corpus_vocabulary, infer_model_config, remap_rows, strip_wrappers  # noqa: F401
from .outputs import StagedOutputs, check_not_an_input
from .word_level import (
    DATASETS,
    choose_tied,
    fairseq_vocabulary,
    infer_word_level_config,
    read_vocab_file,
    remap_word_level,
    write_dict,
    wt103_vocabulary,
)

__all__ = [
    "convert_enwik8",
    "convert_word_level",
    "corpus_vocabulary",
    "infer_model_config",
    "read_vocab_file",
    "remap_rows",
    "wt103_vocabulary",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]


def convert_enwik8(
    paper_checkpoint: PathLike,
    dict_path: PathLike,
    out_path: PathLike,
    corpus: Optional[PathLike] = None,
    vocabulary: Optional[Sequence[int]] = None,
    num_heads: int = 1,
    allow_missing: bool = False,
    eval_window: int = EVAL_WINDOW,
    overwrite: bool = False,
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
        eval_window: evaluation segment = attention window stored with the checkpoint (the
            paper's 3072), see :func:`~fairseq_srupp.convert.checkpoint.build_cfg`.
        overwrite: replace an existing ``out_path`` that differs from the converted checkpoint
            (default: refuse; the same bytes again are fine). ``out_path`` is never an input.

    ``out_path`` appears complete or not at all (written under a temporary name, then renamed).
    """
    if (corpus is None) == (vocabulary is None):
        raise ValueError("give exactly one of corpus (the raw training text) or vocabulary (byte values)")
    out_path = Path(out_path)
    check_not_an_input([(out_path, "--out {}".format(out_path))],
                       {"--paper-checkpoint": paper_checkpoint, "--dict": dict_path, "--corpus": corpus}, "--out")
    paper_state = load_paper_state(paper_checkpoint)
    overrides = infer_model_config(paper_state)
    check_num_heads(num_heads, overrides["proj_size"])
    overrides["num_heads"] = num_heads
    vocab = list(vocabulary) if vocabulary is not None else corpus_vocabulary(corpus)
    dict_path = Path(dict_path)
    if not dict_path.is_file():
        raise FileNotFoundError("no fairseq dictionary at {}".format(dict_path))
    dictionary = load_fairseq_dictionary(dict_path, "--dict")
    state = remap_rows(paper_state, vocab, dictionary.symbols, allow_missing=allow_missing)
    cfg = build_cfg(dict_path.parent, "srupp_lm", overrides, window=eval_window)
    origins = {}
    for paper_prefix, prefix in PAPER_PREFIXES.items():
        origins.update({prefix + k[len(paper_prefix):]: k for k in paper_state if k.startswith(paper_prefix)})
    check_against_model(cfg, dictionary.symbols, state, origins)
    with StagedOutputs("--out", overwrite) as outputs:
        save_fairseq_checkpoint(outputs.stage(out_path), cfg, state)
    return out_path


@dataclass
class ConvertedWordLevel:
    model: Path  # the fairseq checkpoint (OUT/model.pt)
    dictionary: Path  # OUT/dict.txt: binarize the data with it (fairseq-preprocess --srcdict)
    num_symbols: int  # fairseq dictionary size (4 specials + paper words other than eos/unk)
    cutoffs: List[int]  # adaptive softmax cutoffs in fairseq index space
    tied_projections: bool


def convert_word_level(
    paper_checkpoint: PathLike,
    out_dir: PathLike,
    dataset: str = "wt103",
    vocabulary: Optional[Sequence[str]] = None,
    vocab_file: Optional[PathLike] = None,
    corpus: Optional[PathLike] = None,
    eos_symbol: Optional[str] = None,
    unk_symbol: Optional[str] = None,
    tied_projections: Optional[bool] = None,
    num_heads: int = 1,
    eval_window: Optional[int] = None,
    overwrite: bool = False,
) -> ConvertedWordLevel:
    """Convert a paper WikiText-103 / Billion Word state dict to ``OUT/model.pt`` + ``OUT/dict.txt``.

    Args:
        paper_checkpoint: ``torch.save``d state dict of the paper's ``Model`` (train_wt103.py /
            train_lm1b.py).
        out_dir: where ``model.pt`` and ``dict.txt`` go (``from_pretrained(out_dir)`` loads them).
        dataset: ``"wt103"`` or ``"lm1b"``: default symbols, evaluation window and dropouts.
        vocabulary / vocab_file / corpus: the paper's vocabulary in paper index order, given as a
            list, as a file (one token, or ``token count``, per line: ``1b_word_vocab.txt``), or
            (wt103 only) rebuilt from the training text ``wiki.train.tokens`` the paper's way.
            Exactly one of the three.
        eos_symbol / unk_symbol: the paper's end-of-sentence and unknown-word symbols (wt103
            ``<eos>`` / ``<unk>``, lm1b ``<S>`` / ``<UNK>``), mapped to fairseq's ``</s>`` / ``<unk>``.
        tied_projections: None infers it from the state dict (one set of projections, or two
            equal sets on wt103 → tied; two different sets → untied).
        num_heads: attention heads (not recoverable from weight shapes; 1 in every preset).
        eval_window: evaluation segment = attention window, also of generation (default: the paper's,
            wt103 2560, lm1b 96), stored with the stateful task (see ``build_cfg``).
        overwrite: replace an existing ``model.pt`` / ``dict.txt`` in ``out_dir`` that differs from
            the converted one (default: refuse, e.g. a data-bin's dict.txt, which its binarized
            data depend on; the same bytes again are fine). Neither is ever an input.

    Both files appear complete, or neither is changed (written under temporary names, compared
    with what is there, then renamed).
    """
    from fairseq.data import Dictionary

    if dataset not in DATASETS:
        raise ValueError("dataset must be one of {}, got '{}'".format(sorted(DATASETS), dataset))
    setup = DATASETS[dataset]
    if sum(v is not None for v in (vocabulary, vocab_file, corpus)) != 1:
        raise ValueError("give exactly one of vocabulary, vocab_file or corpus (the paper's vocabulary)")
    if corpus is not None and dataset != "wt103":
        raise ValueError("rebuilding the vocabulary from a corpus is the WikiText-103 recipe; for {} pass "
                         "its vocabulary file".format(dataset))
    eos = setup.eos if eos_symbol is None else eos_symbol
    unk = setup.unk if unk_symbol is None else unk_symbol
    out_dir = Path(out_dir).resolve()
    model_path, dict_path = out_dir / "model.pt", out_dir / "dict.txt"
    check_not_an_input([(path, "--out-dir {} (its {})".format(out_dir, path.name)) for path in (model_path, dict_path)],
                       {"--paper-checkpoint": paper_checkpoint, "--vocab": vocab_file, "--corpus": corpus}, "--out-dir")

    paper_state = load_paper_state(paper_checkpoint)
    tied = choose_tied(paper_state, setup.tied_projections) if tied_projections is None else tied_projections
    if tied != setup.tied_projections:
        logger.warning("converting with %s projections; the paper's %s model %s them",
                       "tied" if tied else "untied", dataset, "ties" if setup.tied_projections else "unties")
    overrides, layout = infer_word_level_config(paper_state, tied)
    check_num_heads(num_heads, overrides["proj_size"])
    if len(layout.sizes) < 2:
        raise ValueError("the output layer has a single cluster; srupp_lm's adaptive softmax needs tail clusters")
    if tuple(layout.cutoffs) != setup.cutoffs or layout.vocab_size != setup.vocab_size:
        logger.warning("the checkpoint's cutoffs %s and vocabulary size %d differ from the paper's %s setup (%s, %d)",
                       layout.cutoffs, layout.vocab_size, dataset, list(setup.cutoffs), setup.vocab_size)

    if vocabulary is not None:
        words = list(vocabulary)
    elif vocab_file is not None:
        words = read_vocab_file(vocab_file)
    else:
        logger.info("counting the words of %s (the paper's WikiText-103 vocabulary) ...", corpus)
        words = wt103_vocabulary(corpus, specials=(eos,))
    if len(words) != layout.vocab_size:
        raise ValueError(
            "the paper vocabulary given has {} words but the checkpoint's clusters hold {} (sizes {}, "
            "paper cutoffs {}): pass the vocabulary the model was trained with".format(
                len(words), layout.vocab_size, layout.sizes, layout.cutoffs
            )
        )
    symbols, rows = fairseq_vocabulary(words, layout.sizes[0], eos, unk)
    state, cutoffs, origins = remap_word_level(paper_state, layout, rows, tied)

    overrides.update(
        adaptive_softmax_cutoff=",".join(str(c) for c in cutoffs),
        num_heads=num_heads,
        dropout=setup.dropout,
        attn_dropout=setup.attn_dropout,
        emb_dropout=setup.emb_dropout,
    )
    cfg = build_cfg(out_dir, "srupp_lm", overrides, window=setup.eval_window if eval_window is None else eval_window,
                    prepend_eos=setup.prepend_eos, extra_args=["--criterion", "srupp_adaptive_loss"])
    check_against_model(cfg, symbols, state, origins)

    with StagedOutputs("--out-dir", overwrite) as outputs:
        written_dict = write_dict(outputs.stage(dict_path), symbols)
        if Dictionary.load(str(written_dict)).symbols != symbols:
            raise ValueError("fairseq reads the written dict.txt differently from the converted vocabulary "
                             "(a paper word fairseq cannot represent?)")
        save_fairseq_checkpoint(outputs.stage(model_path), cfg, state)
    return ConvertedWordLevel(model_path, dict_path, len(symbols), cutoffs, tied)
