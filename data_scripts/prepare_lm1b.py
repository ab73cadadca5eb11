#!/usr/bin/env python
"""One Billion Word benchmark → word-level fairseq data, one sentence per line, as the paper.

    python data_scripts/prepare_lm1b.py --out data/lm1b                      # downloads the archive
    python data_scripts/prepare_lm1b.py --archive 1-billion-word-language-modeling-benchmark-r13output.tar.gz
    python data_scripts/prepare_lm1b.py --raw-dir 1-billion-word-language-modeling-benchmark-r13output
    python data_scripts/prepare_lm1b.py --archive ... --vocab-file 1b_word_vocab.txt     # the paper's vocabulary

The SRU++ paper prepares Billion Word with Transformer-XL's pipeline (its ``getdata.sh`` and
``data_utils.py``): train is all 99 training shards
``training-monolingual.tokenized.shuffled/news.en-000{01..99}-of-00100``; valid and test are both
the first held-out shard ``heldout-monolingual.tokenized.shuffled/news.en.heldout-00000-of-00050``
(``--valid-shards`` / ``--test-shards`` pick other held-out shards). Each sentence stays on its own
line, so each binarized item is one sentence ending with ``</s>``; train with
``--task srupp_language_modeling --shuffle-sentences --prepend-eos``, which wraps every sentence as
``</s> words </s>``, the ``<S> words <S>`` of Transformer-XL.

Vocabulary: the benchmark's has 793,471 symbols (its README's unigram count): the words seen at
least 3 times in its training data plus ``<S>``, ``</S>`` and ``<UNK>``; Transformer-XL reads it from
``1b_word_vocab.txt``. By default the dictionary is built from the train split keeping the words
seen at least ``--threshold 3`` times (fairseq's ``--thresholdsrc``: a word is kept when its count is
>= the threshold; fairseq then pads the dictionary to a multiple of 8 with unused ``madeupword``
entries). ``--vocab-file FILE`` uses a given vocabulary instead, one word per line (first field;
``1b_word_vocab.txt``'s ``word count`` lines work), in the file's order: ``<S>`` and ``</S>`` become
fairseq's ``</s>`` and ``<UNK>`` its ``<unk>``, so the 793,471 symbols become 793,468 words +
fairseq's 4 specials = 793,472. ``--srcdict`` takes a fairseq ``dict.txt`` verbatim (e.g. to keep a
converted checkpoint's order). Words outside the dictionary become ``<unk>``.

OUT then holds:
    raw/training-monolingual.tokenized.shuffled/   the 99 training shards (not with --raw-dir)
    raw/heldout-monolingual.tokenized.shuffled/    the 50 held-out shards (not with --raw-dir)
    {train,valid,test}.txt     the splits, one sentence per line (train: the shards in name order)
    dict.vocab.txt             the --vocab-file as a fairseq dictionary
    data-bin/                  dict.txt and {train,valid,test}.{bin,idx} for fairseq-train
    downloads/...tar.gz        when the script downloaded it
    .stamps/                   what each finished step consumed: a rerun skips finished steps
                               (--force redoes them)
Disk: about 1.8 GB archive + 4.2 GB shards + 4.2 GB train.txt + 3.3 GB binarized.

Checks: the archive's size and SHA-256 and the number of training sentences (30,301,028, as in
TFDS/Hugging Face lm1b), unless --skip-checksum (custom archives: all 99 training and 50 held-out
shards must still be there, and no split may be empty). No per-shard checksums are published, so a
--raw-dir is checked by its shard list and its sentence count.
"""
import argparse
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bootstrap  # noqa: E402,F401  (logs to stdout; this checkout's fairseq_srupp if not installed)

from fairseq_srupp.cli_args import positive_int
from fairseq_srupp.data.binarize import report, word_level_binarize
from fairseq_srupp.data.fetch import archive_errors, check_file, obtain_archive, redo_hint
from fairseq_srupp.data.files import CHUNK, atomic_dir, existing_dir, atomic_file, concatenate, fingerprint, optional_file
from fairseq_srupp.data.prep import SPLITS, PrepError, cli, count, log
from fairseq_srupp.data.preprocess import default_workers
from fairseq_srupp.data.steps import Steps
from fairseq_srupp.data.vocab import checked_srcdict, vocab_file_to_dict

URL = "http://www.statmt.org/lm-benchmark/1-billion-word-language-modeling-benchmark-r13output.tar.gz"
# Size and SHA-256 of the archive on statmt.org, as pinned by TensorFlow's tensor2tensor/lingvo
# download scripts and Julia's DataDeps registration.
ARCHIVE_SIZE = 1792209805
ARCHIVE_SHA256 = "01ba60381110baf7f189dfd2b8374de371e8c9a340835793f190bdae9e90a34e"
TOP = "1-billion-word-language-modeling-benchmark-r13output"
TRAIN_DIR = "training-monolingual.tokenized.shuffled"
HELDOUT_DIR = "heldout-monolingual.tokenized.shuffled"
TRAIN_SHARDS = ["news.en-{:05d}-of-00100".format(i) for i in range(1, 100)]
HELDOUT_SHARDS = ["news.en.heldout-{:05d}-of-00050".format(i) for i in range(50)]
# Sentences in the 99 training shards (TFDS and Hugging Face lm1b: 30,301,028 train examples).
TRAIN_SENTENCES = 30301028
# The benchmark's sentence markers and unknown word, as fairseq's symbols.
VOCAB_ALIASES = {"<S>": "</s>", "</S>": "</s>", "<UNK>": "<unk>"}


def shard_numbers(text: str):
    try:
        numbers = [int(v) for v in text.split(",")]
    except ValueError:
        numbers = []
    if not numbers or not all(0 <= n < len(HELDOUT_SHARDS) for n in numbers):
        raise argparse.ArgumentTypeError("expected held-out shard numbers 0-49 separated by commas, got {!r}"
                                         .format(text))
    return numbers


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/lm1b", help="output directory (default: %(default)s)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--archive", help="an already downloaded ...-r13output.tar.gz (default: download it)")
    source.add_argument("--raw-dir", help="the extracted 1-billion-word-language-modeling-benchmark-r13output "
                                          "directory (or its parent)")
    parser.add_argument("--url", default=URL, help="where to download the archive from (default: %(default)s)")
    parser.add_argument("--skip-checksum", action="store_true",
                        help="do not compare size, checksum and sentence count with the official data")
    parser.add_argument("--valid-shards", type=shard_numbers, default=[0], metavar="N[,N...]",
                        help="held-out shards forming valid (default: 0, as Transformer-XL)")
    parser.add_argument("--test-shards", type=shard_numbers, default=[0], metavar="N[,N...]",
                        help="held-out shards forming test (default: 0, as Transformer-XL)")
    vocab = parser.add_mutually_exclusive_group()
    vocab.add_argument("--threshold", type=int, default=3,
                       help="keep train words seen at least this often (default: %(default)s)")
    vocab.add_argument("--vocab-file", help="vocabulary file, one word per line (e.g. 1b_word_vocab.txt)")
    vocab.add_argument("--srcdict", help="binarize with this fairseq dict.txt (keeps its order)")
    parser.add_argument("--workers", type=positive_int, default=default_workers(), help="fairseq-preprocess workers")
    parser.add_argument("--force", action="store_true",
                        help="redo every step even if it is up to date, and replace outputs already in OUT "
                             "that no data script made")
    return parser.parse_args(argv)


def missing_error(where: str, missing, hint: str) -> PrepError:
    more = " (and {} more)".format(len(missing) - 1) if len(missing) > 1 else ""
    return PrepError("{} has no {}{}: {}".format(where, missing[0], more, hint))


def extract(archive: Path, raw: Path, hint: str) -> None:
    """Stream the archive once, writing the training and held-out shards under ``raw``."""
    wanted = {"{}/{}/{}".format(TOP, TRAIN_DIR, name): Path(TRAIN_DIR) / name for name in TRAIN_SHARDS}
    wanted.update({"{}/{}/{}".format(TOP, HELDOUT_DIR, name): Path(HELDOUT_DIR) / name for name in HELDOUT_SHARDS})
    found = set()
    with atomic_dir(raw) as tmp, archive_errors(archive, hint), tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            name = member.name[2:] if member.name.startswith("./") else member.name
            if name not in wanted or not member.isfile():
                continue
            src = tar.extractfile(member)
            with atomic_file(tmp / wanted[name]) as out:
                for chunk in iter(lambda: src.read(CHUNK), b""):
                    out.write(chunk)
            found.add(name)
            if len(found) % 10 == 0:
                log("  extracted {} of {} shards".format(len(found), len(wanted)))
        missing = [name for name in wanted if name not in found]
        if missing:
            raise missing_error(str(archive), missing, hint)


def prepare(args) -> Path:
    out = Path(args.out)
    srcdict = checked_srcdict(args.srcdict)
    vocab = optional_file(args.vocab_file, "--vocab-file")
    writes = ["{}.txt".format(split) for split in SPLITS] + ["data-bin"] + (["raw"] if args.raw_dir is None else [])
    steps = Steps(out, force=args.force, writes=writes + (["dict.vocab.txt"] if vocab is not None else []),
                  inputs={"--vocab-file": vocab} if vocab is not None else None)

    if args.raw_dir is not None:
        hint = "--raw-dir needs the extracted {} directory with all 99 training and 50 held-out shards".format(TOP)
        raw = existing_dir(args.raw_dir, "--raw-dir", hint)
        if not (raw / TRAIN_DIR).is_dir() and (raw / TOP / TRAIN_DIR).is_dir():
            raw = raw / TOP
        missing = [str(raw / d / n) for d, names in ((TRAIN_DIR, TRAIN_SHARDS), (HELDOUT_DIR, HELDOUT_SHARDS))
                   for n in names if not (raw / d / n).is_file()]
        if missing:
            raise missing_error("the raw directory", missing, hint)
    else:
        archive, downloaded = obtain_archive(args.archive, args.url, out)
        hint = redo_hint(args.url, downloaded, archive)
        raw = out / "raw"

        def verify_and_extract():
            if not args.skip_checksum:
                check_file(archive, "archive", ARCHIVE_SIZE, ARCHIVE_SHA256, hint)
            extract(archive, raw, hint)

        steps.run("extract", dict(archive=fingerprint(archive), skip_checksum=args.skip_checksum,
                                  sha256=ARCHIVE_SHA256), [raw], verify_and_extract)

    train_shards = [raw / TRAIN_DIR / name for name in TRAIN_SHARDS]
    heldout = {"valid": [raw / HELDOUT_DIR / HELDOUT_SHARDS[i] for i in args.valid_shards],
               "test": [raw / HELDOUT_DIR / HELDOUT_SHARDS[i] for i in args.test_shards]}
    files = {split: out / "{}.txt".format(split) for split in SPLITS}

    def make_splits():
        sources = dict(train=train_shards, **heldout)
        for split, paths in sources.items():  # before writing anything
            if sum(p.stat().st_size for p in paths) == 0:
                raise PrepError("the {} split is empty ({} hold no sentence): every split needs text".format(
                    split, ", ".join(p.name for p in paths[:3]) + (", ..." if len(paths) > 3 else "")))

        def check_train(lines):
            if not args.skip_checksum and lines != TRAIN_SENTENCES:
                raise PrepError("the training shards hold {} sentences but the benchmark's hold {}: {}; or pass "
                                "--skip-checksum for custom data".format(count(lines), count(TRAIN_SENTENCES), hint))

        for split, paths in sources.items():
            lines = concatenate(paths, files[split], check_train if split == "train" else None)
            log("{}: {} sentences from {} -> {}".format(
                split, count(lines), "{} shards".format(len(paths)) if len(paths) > 3 else
                ", ".join(p.name for p in paths), files[split]))

    inputs = {"train": [fingerprint(p) for p in train_shards], "skip_checksum": args.skip_checksum}
    inputs.update({split: [fingerprint(p) for p in paths] for split, paths in heldout.items()})
    steps.run("splits", inputs, list(files.values()), make_splits)

    if vocab is not None:
        srcdict = out / "dict.vocab.txt"

        def convert():
            n = vocab_file_to_dict(vocab, srcdict, VOCAB_ALIASES)
            log("{}: {} words (+ fairseq's <s>, <pad>, </s>, <unk>) -> {}".format(vocab, count(n), srcdict))

        steps.run("vocabulary", dict(vocab=fingerprint(vocab)), [srcdict], convert)

    data_bin = word_level_binarize(steps, out, files, srcdict=srcdict, threshold=args.threshold,
                                   workers=args.workers,
                                   # a --vocab-file may leave out words on purpose (the benchmark's: rare ones)
                                   srcdict_option="--srcdict" if vocab is None else None)
    report(data_bin, steps)
    return data_bin


def main(argv=None) -> int:
    args = parse_args(argv)
    return cli(lambda: prepare(args))


if __name__ == "__main__":
    sys.exit(main())
