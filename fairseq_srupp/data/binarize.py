"""The binarization steps the dataset scripts share: byte level and word level."""
import json
import os
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

from .files import PathLike, atomic_file, check_utf8_text, file_chunks, fingerprint, temp_path
from .preprocess import describe_data_bin, drop_final_eos, fairseq_preprocess
from .prep import SPLITS, PrepError, count, log
from .steps import Steps


def report(data_bin: PathLike, steps: Steps) -> None:
    for line in describe_data_bin(data_bin):
        log(line)
    if steps.ran:
        log("done: {} ready for fairseq-train (ran: {})".format(data_bin, ", ".join(steps.ran)))
    else:
        log("done: nothing to do, {} is up to date".format(data_bin))


def dict_inputs(srcdict: Optional[PathLike]) -> Optional[Dict[str, object]]:
    return fingerprint(srcdict) if srcdict is not None else None


def byte_level_steps(steps: Steps, out_dir: PathLike, read_parts: Callable[[], Sequence[bytes]],
                     source: Dict[str, object], vocab: str = "train", srcdict: Optional[Path] = None,
                     workers: int = 1) -> Path:
    """Tokenize three byte strings (train, valid, test; from ``read_parts()``) one token per byte
    into ``OUT/{split}.tokens`` and binarize them into ``OUT/data-bin``.

    ``vocab``: ``"corpus"`` builds the dictionary from every byte of all three splits (the paper's
    vocabulary), ``"train"`` from the train split (fairseq's default; other bytes become
    ``<unk>``); ``srcdict`` overrides both. The binarized splits hold exactly one token per byte:
    a split that does not end with a newline loses the ``</s>`` that fairseq adds to its last line.
    ``source`` describes the input for the stamp.
    """
    from .char_level import byte_counts, byte_dictionary_lines, write_byte_tokens

    out_dir = Path(out_dir)
    tokens = {split: out_dir / "{}.tokens".format(split) for split in SPLITS}
    layout = out_dir / "splits.json"
    corpus_dict = out_dir / "dict.corpus.txt"

    def tokenize():
        parts = dict(zip(SPLITS, read_parts()))
        for split in SPLITS:
            if not parts[split]:
                raise PrepError("the {} split is empty: every split needs at least one byte".format(split))
        out_dir.mkdir(parents=True, exist_ok=True)
        info = {}
        for split in SPLITS:
            part = parts[split]
            tmp = temp_path(tokens[split])
            try:
                lines = write_byte_tokens(part, tmp)
                os.replace(tmp, tokens[split])
            finally:
                if tmp.exists():
                    tmp.unlink()
            info[split] = {"bytes": len(part), "lines": lines, "ends_with_newline": part.endswith(b"\n")}
            log("{}: {} bytes, {} lines -> {}".format(split, count(len(part)), count(lines), tokens[split]))
        counts = [sum(c) for c in zip(*(byte_counts(parts[s]) for s in SPLITS))]
        with atomic_file(corpus_dict, "w", encoding="ascii") as f:
            f.write("".join(line + "\n" for line in byte_dictionary_lines(counts)))
        log("corpus vocabulary: {} distinct bytes".format(sum(1 for c in counts if c)))
        with atomic_file(layout, "w") as f:
            json.dump(info, f, indent=1)

    steps.run("tokenize", dict(source=source), list(tokens.values()) + [layout, corpus_dict], tokenize)

    data_bin = out_dir / "data-bin"
    dictionary = srcdict if srcdict is not None else (corpus_dict if vocab == "corpus" else None)

    def binarize():
        info = json.loads(layout.read_text())

        def finish(tmp: Path):
            import numpy as np
            from fairseq.data.indexed_dataset import MMapIndexedDataset, index_file_path

            for split in SPLITS:
                if not info[split]["ends_with_newline"]:
                    drop_final_eos(tmp / split)
                index = MMapIndexedDataset.Index(index_file_path(str(tmp / split)))
                n = int(np.asarray(index.sizes).sum())
                del index
                if n != info[split]["bytes"]:
                    raise RuntimeError("{}: {} tokens for {} bytes".format(split, n, info[split]["bytes"]))

        origin = "--srcdict {}".format(srcdict) if srcdict is not None else None  # the corpus dictionary fits
        fairseq_preprocess(data_bin, tokens, srcdict=dictionary, workers=workers, finish=finish, srcdict_origin=origin)

    inputs = {split: fingerprint(path) for split, path in tokens.items()}
    inputs.update(layout=fingerprint(layout), dictionary=dict_inputs(dictionary), vocab=vocab)
    steps.run("binarize", inputs, [data_bin], binarize)
    return data_bin


def word_level_binarize(steps: Steps, out_dir: PathLike, files: Dict[str, Path], srcdict: Optional[Path] = None,
                        threshold: int = 0, workers: int = 1, utf8_hint: Optional[str] = None,
                        srcdict_option: Optional[str] = "--srcdict") -> Path:
    """Binarize whitespace-tokenized text files (one sentence or paragraph per line) into
    ``OUT/data-bin`` with a dictionary from ``srcdict`` or from the train split (``threshold``).

    Each file must be UTF-8 text (checked first; ``utf8_hint`` says what to do otherwise).
    ``srcdict_option``: the option the user gave ``srcdict`` with (a ``srcdict`` that would turn most
    tokens into ``<unk>`` is then refused), or None for one the script made on purpose."""
    data_bin = Path(out_dir) / "data-bin"
    inputs = {split: fingerprint(path) for split, path in files.items()}
    inputs.update(dictionary=dict_inputs(srcdict), threshold=threshold if srcdict is None else None)

    origin = "{} {}".format(srcdict_option, srcdict) if srcdict is not None and srcdict_option else None

    def binarize():
        for path in files.values():
            check_utf8_text(file_chunks(path), str(path), **({"hint": utf8_hint} if utf8_hint else {}))
        fairseq_preprocess(data_bin, files, srcdict=srcdict, threshold=threshold, workers=workers,
                           srcdict_origin=origin)

    steps.run("binarize", inputs, [data_bin], binarize)
    return data_bin
