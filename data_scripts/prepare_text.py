#!/usr/bin/env python
"""Any text → fairseq data, byte-level or word-level.

    python data_scripts/prepare_text.py --text corpus.txt --out data/corpus                  # bytes
    python data_scripts/prepare_text.py --train a.txt --valid b.txt --test c.txt --out data/x --level word
    python data_scripts/prepare_text.py --text raw.txt --level word --tokenizer moses --threshold 2 --out data/y
    python data_scripts/prepare_text.py --url https://example.org/corpus.txt --out data/z

Input: one file (``--text``, or ``--url`` to download it), split into contiguous train / valid / test
parts (the last ``--valid-fraction`` and ``--test-fraction`` before the end, cut at line
boundaries), or three files (``--train --valid --test``).

``--level char`` (default): one token per byte, written as its decimal value, the newline byte being
fairseq's ``</s>`` (see ``fairseq_srupp.data.char_level``); each binarized split holds exactly one
token per byte. The dictionary comes from the train split (``--vocab train``, bytes seen only in
valid/test become ``<unk>``) or from all bytes of all splits (``--vocab corpus``).

``--level word``: whitespace-separated tokens, one line per sentence or paragraph, each line ending
with ``</s>``. ``--tokenizer moses`` first tokenizes raw text with sacremoses (``--lang``).
The dictionary holds the train words seen at least ``--threshold`` times (fairseq's
``--thresholdsrc``; 0, the default, keeps every word; fairseq pads it to a multiple of 8 with unused
``madeupword`` entries); other words become ``<unk>``.

``--srcdict`` binarizes with a given fairseq ``dict.txt`` at either level.

OUT then holds:
    {train,valid,test}.tokens  the text as binarized (bytes: decimal tokens; words: split and/or
                               tokenized text; not written for three untokenized word-level files)
    splits.json, dict.corpus.txt   (char level) bytes per split; the --vocab corpus dictionary
    data-bin/                  dict.txt and {train,valid,test}.{bin,idx} for fairseq-train
    downloads/NAME             with --url
    .stamps/                   what each finished step consumed: a rerun skips finished steps
                               (--force redoes them)
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bootstrap  # noqa: E402,F401  (logs to stdout; this checkout's fairseq_srupp if not installed)

from fairseq_srupp.cli_args import positive_int
from fairseq_srupp.data.binarize import byte_level_steps, report, word_level_binarize
from fairseq_srupp.data.fetch import check_file, download
from fairseq_srupp.data.files import atomic_file, check_utf8_text, existing_file, file_chunks, fingerprint
from fairseq_srupp.data.prep import SPLITS, PrepError, cli, count, log
from fairseq_srupp.data.preprocess import default_workers
from fairseq_srupp.data.steps import Steps
from fairseq_srupp.data.vocab import checked_srcdict

UTF8_HINT = ("word-level data must be UTF-8 text: convert it first (e.g. iconv -f latin1 -t utf-8) or "
             "use --level char, which takes any bytes")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="one text file, split into train/valid/test")
    source.add_argument("--url", help="download one text file (into OUT/downloads) and split it")
    source.add_argument("--train", help="train file (with --valid and --test)")
    parser.add_argument("--valid", help="valid file (with --train)")
    parser.add_argument("--test", help="test file (with --train)")
    parser.add_argument("--sha256", help="expected SHA-256 of --text / --url")
    parser.add_argument("--valid-fraction", type=float, default=0.05, help="of a single file (default: 0.05)")
    parser.add_argument("--test-fraction", type=float, default=0.05, help="of a single file (default: 0.05)")
    parser.add_argument("--level", choices=["char", "word"], default="char", help="tokens (default: %(default)s)")
    parser.add_argument("--vocab", choices=["train", "corpus"], default="train",
                        help="char level: dictionary from the train split or from every split")
    parser.add_argument("--threshold", type=int, default=0, help="word level: minimum train count of a word")
    parser.add_argument("--tokenizer", choices=["none", "moses"], default="none",
                        help="word level: tokenize raw text first (default: %(default)s)")
    parser.add_argument("--lang", default="en", help="language of the Moses tokenizer (default: %(default)s)")
    parser.add_argument("--srcdict", help="binarize with this fairseq dict.txt")
    parser.add_argument("--workers", type=positive_int, default=default_workers(), help="fairseq-preprocess workers")
    parser.add_argument("--force", action="store_true",
                        help="redo every step even if it is up to date, and replace outputs already in OUT "
                             "that no data script made")
    args = parser.parse_args(argv)
    if (args.train is None) != (args.valid is None) or (args.train is None) != (args.test is None):
        parser.error("--train, --valid and --test go together")
    for name in ("valid_fraction", "test_fraction"):
        if not 0 < getattr(args, name) < 0.5:
            parser.error("--{} must be in (0, 0.5)".format(name.replace("_", "-")))
    return args


def split_lines(data: bytes, valid_fraction: float, test_fraction: float):
    """Contiguous split of whole lines: the last lines go to test, the ones before them to valid."""
    lines = data.splitlines(keepends=True)
    n = len(lines)
    n_valid, n_test = max(1, round(n * valid_fraction)), max(1, round(n * test_fraction))
    if n - n_valid - n_test < 1:
        raise PrepError("the text has {} lines; splitting it needs at least 3 (or give --train --valid --test)"
                        .format(n))
    a, b = n - n_valid - n_test, n - n_test
    return b"".join(lines[:a]), b"".join(lines[a:b]), b"".join(lines[b:])


def moses_tokenize(src: bytes, dest: Path, lang: str) -> int:
    from sacremoses import MosesTokenizer

    tokenizer = MosesTokenizer(lang=lang)
    n = 0
    with atomic_file(dest, "w", encoding="utf-8") as out:
        for line in src.decode("utf-8").splitlines():  # checked to be UTF-8 before
            out.write(tokenizer.tokenize(line, escape=False, return_str=True) + "\n")
            n += 1
    return n


def output_names(args):
    """What this run writes under OUT (besides .stamps/ and downloads/)."""
    tokens = ["{}.tokens".format(split) for split in SPLITS]
    if args.level == "char":
        return tokens + ["splits.json", "dict.corpus.txt", "data-bin"]
    tokenized = args.train is None or args.tokenizer != "none"  # else the three files are binarized as they are
    return (tokens if tokenized else []) + ["data-bin"]


def prepare(args) -> Path:
    out = Path(args.out)
    srcdict = checked_srcdict(args.srcdict)
    if args.text is not None:
        inputs = {"--text": existing_file(args.text, "--text")}
    elif args.train is not None:
        inputs = {"--" + split: existing_file(getattr(args, split), "--" + split) for split in SPLITS}
    else:
        inputs = {}
    steps = Steps(out, force=args.force, writes=output_names(args), inputs=inputs)

    if args.url is not None:
        name = args.url.rstrip("/").rsplit("/", 1)[-1] or "text"
        text = out / "downloads" / name
        if not text.is_file():
            download(args.url, text, option="--text")
        single = [text]
    elif args.text is not None:
        single = [inputs["--text"]]
    else:
        single = []
        named = {split: inputs["--" + split] for split in SPLITS}
    if single and args.sha256:
        steps.run("verify", dict(text=fingerprint(single[0]), sha256=args.sha256), [],
                  lambda: check_file(single[0], "file", None, args.sha256.lower(),
                                     "check --sha256 or fetch the file again", "drop --sha256"))
    sources = single or list(named.values())
    source = dict(files=[fingerprint(p) for p in sources], valid_fraction=args.valid_fraction,
                  test_fraction=args.test_fraction)

    def read_parts():
        if not single:
            return [named[split].read_bytes() for split in SPLITS]
        data = single[0].read_bytes()
        if args.level == "char":
            from fairseq_srupp.data.char_level import split_bytes

            try:
                return split_bytes(data, args.valid_fraction, args.test_fraction)
            except ValueError as err:
                raise PrepError("{}: {}".format(single[0], err)) from None
        return split_lines(data, args.valid_fraction, args.test_fraction)

    if args.level == "char":
        data_bin = byte_level_steps(steps, out, read_parts, source, vocab=args.vocab, srcdict=srcdict,
                                    workers=args.workers)
    else:
        if single or args.tokenizer != "none":
            files = {split: out / "{}.tokens".format(split) for split in SPLITS}

            def tokenize():
                for path in sources:
                    check_utf8_text(file_chunks(path), str(path), UTF8_HINT)
                parts = dict(zip(SPLITS, read_parts()))
                for split in SPLITS:
                    if not parts[split].strip():
                        raise PrepError("the {} split is empty: every split needs text".format(split))
                for split in SPLITS:
                    if args.tokenizer == "moses":
                        lines = moses_tokenize(parts[split], files[split], args.lang)
                    else:
                        with atomic_file(files[split]) as f:
                            f.write(parts[split] if parts[split].endswith(b"\n") else parts[split] + b"\n")
                        lines = parts[split].count(b"\n") + (not parts[split].endswith(b"\n"))
                    log("{}: {} lines -> {}".format(split, count(lines), files[split]))

            steps.run("tokenize", dict(source, tokenizer=args.tokenizer, lang=args.lang), list(files.values()),
                      tokenize)
        else:
            files = named
        data_bin = word_level_binarize(steps, out, files, srcdict=srcdict, threshold=args.threshold,
                                       workers=args.workers, utf8_hint=UTF8_HINT)
    report(data_bin, steps)
    return data_bin


def main(argv=None) -> int:
    args = parse_args(argv)
    return cli(lambda: prepare(args))


if __name__ == "__main__":
    sys.exit(main())
