"""The one way this project runs ``fairseq-preprocess``: in this process, into a temporary directory.

Used by the dataset scripts and by :func:`fairseq_srupp.data.char_level.binarize_char_corpus` (the
demo and the benchmarks), so every binarized split comes out of the same code.
"""
import logging
import os
import shlex
from pathlib import Path
from typing import Callable, Dict, List, Optional

from .files import PathLike, atomic_dir, require_nonempty, temp_path
from .prep import SPLITS, PrepError, count, log


# Above this share of <unk>, a --srcdict does not fit the data (typically a word dictionary for
# bytes, or the reverse): the binarized data would say little more than "<unk>".
MAX_UNK_SHARE = 0.5


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def fairseq_preprocess(data_bin: PathLike, files: Dict[str, Path], srcdict: Optional[PathLike] = None,
                       threshold: int = 0, workers: int = 1,
                       finish: Optional[Callable[[Path], None]] = None, srcdict_origin: Optional[str] = None) -> Path:
    """``fairseq-preprocess --only-source`` of ``files`` (split name → text file) into ``data_bin``.

    Runs in this process (it imports fairseq once, not twice) into a temporary directory that
    replaces ``data_bin`` when complete; ``finish(tmp_dir)`` may edit the result before that.
    The dictionary is ``srcdict`` verbatim if given, else built from the train split keeping
    words seen at least ``threshold`` times (fairseq's ``--thresholdsrc``; 0 keeps every word).
    ``srcdict_origin``: how the user gave ``srcdict`` (``--srcdict PATH``), for a dictionary the user
    chose: one that turns most tokens into ``<unk>`` is then refused (``data_bin`` is left as it was).
    """
    from fairseq import options
    from fairseq_cli import preprocess

    for split in SPLITS:
        require_nonempty(split, files[split])
    with atomic_dir(data_bin) as tmp:
        args = ["--only-source", "--trainpref", files["train"], "--validpref", files["valid"],
                "--testpref", files["test"], "--destdir", tmp, "--workers", workers]
        if srcdict is not None:
            args += ["--srcdict", srcdict]
        elif threshold > 0:
            args += ["--thresholdsrc", threshold]
        args = [str(a) for a in args]
        shown = [str(data_bin) if a == str(tmp) else a for a in args]
        log("$ fairseq-preprocess " + " ".join(shlex.quote(a) for a in shown))
        parsed = options.get_preprocessing_parser().parse_args(args)
        fairseq_logger = logging.getLogger("fairseq_cli.preprocess")
        handlers = list(fairseq_logger.handlers)
        try:
            preprocess.main(parsed)
        except (AssertionError, ValueError, RuntimeError, FileExistsError) as err:  # e.g. a malformed --srcdict
            raise PrepError("fairseq-preprocess failed: {}".format(err or type(err).__name__)) from None
        finally:
            for handler in fairseq_logger.handlers[len(handlers):]:  # its log file handler, per call
                fairseq_logger.removeHandler(handler)
                handler.close()
        if srcdict is not None and srcdict_origin is not None:
            refuse_mostly_unknown(tmp, srcdict_origin)
        if finish is not None:
            finish(tmp)
    return Path(data_bin)


def unknown_share(data_bin: PathLike) -> float:
    """The share of ``<unk>`` among all tokens of the binarized splits in ``data_bin``.

    Read from the ``.bin`` files (memory-mapped, in slices): fairseq-preprocess only logs its
    "replaced" share, and the ``.bin`` also counts a literal ``<unk>`` of the text."""
    import numpy as np
    from fairseq.data import Dictionary
    from fairseq.data.indexed_dataset import MMapIndexedDataset, data_file_path, index_file_path

    data_bin = Path(data_bin)
    unk = Dictionary.load(str(data_bin / "dict.txt")).unk()
    unknown = total = 0
    for split in SPLITS:
        prefix = str(data_bin / split)
        index = MMapIndexedDataset.Index(index_file_path(prefix))
        dtype = index.dtype
        del index
        if os.path.getsize(data_file_path(prefix)) == 0:
            continue
        tokens = np.memmap(data_file_path(prefix), dtype=dtype, mode="r")
        for start in range(0, len(tokens), 1 << 24):
            unknown += int(np.count_nonzero(tokens[start:start + (1 << 24)] == unk))
        total += len(tokens)
        del tokens
    return unknown / total if total else 0.0


def refuse_mostly_unknown(data_bin: PathLike, origin: str) -> None:
    """A given dictionary that covers less than half the tokens is the wrong one (``origin`` names it)."""
    share = unknown_share(data_bin)
    if share > MAX_UNK_SHARE:
        raise PrepError("{} does not fit the data: {:.1%} of the tokens would become <unk> (more than {:.0%}); "
                        "is it a dictionary of the other level? byte-level data needs one of byte values "
                        "(e.g. a data-bin's dict.txt made with --level char), word-level data one of words; "
                        "or drop it to build the dictionary from the data".format(origin, share, MAX_UNK_SHARE))


def drop_final_eos(prefix: PathLike) -> None:
    """Remove the ``</s>`` that fairseq appends to the last line of a split whose text does not
    end with a newline (byte-level data: there it stands for a newline byte that is not there).

    Rewrites the ``.idx`` with the last item one token shorter and truncates the ``.bin``.
    """
    import numpy as np
    from fairseq.data.indexed_dataset import MMapIndexedDataset, data_file_path, index_file_path

    prefix = str(prefix)
    index = MMapIndexedDataset.Index(index_file_path(prefix))
    sizes = np.array(index.sizes, dtype=np.int64)
    dtype = index.dtype
    del index
    if len(sizes) == 0 or sizes[-1] < 1:
        return
    sizes[-1] -= 1
    if sizes[-1] == 0:
        sizes = sizes[:-1]
    tmp = temp_path(index_file_path(prefix))
    with MMapIndexedDataset.Index.writer(str(tmp), dtype) as writer:
        writer.write(sizes.tolist())
    os.replace(tmp, index_file_path(prefix))
    bin_path = data_file_path(prefix)
    os.truncate(bin_path, int(sizes.sum()) * np.dtype(dtype).itemsize)


def describe_data_bin(data_bin: PathLike) -> List[str]:
    """One line for the dictionary and one per split: what ``fairseq-train`` will see."""
    from fairseq.data import Dictionary
    from fairseq.data.indexed_dataset import MMapIndexedDataset, index_file_path

    data_bin = Path(data_bin)
    d = Dictionary.load(str(data_bin / "dict.txt"))
    padding = sum(1 for s in d.symbols if s.startswith("madeupword"))
    lines = ["dictionary: {} symbols ({} special + {} from the data{})".format(
        count(len(d)), d.nspecial, count(len(d) - d.nspecial - padding),
        " + {} padding to a multiple of 8".format(padding) if padding else "")]
    for split in SPLITS:
        index = MMapIndexedDataset.Index(index_file_path(str(data_bin / split)))
        lines.append("{}: {} lines, {} tokens".format(split, count(len(index)), count(int(index.sizes.sum()))))
        del index
    return lines
