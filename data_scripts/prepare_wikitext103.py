#!/usr/bin/env python
"""WikiText-103 (tokenized, v1) → word-level fairseq data, as the paper (via Transformer-XL).

    python data_scripts/prepare_wikitext103.py --out data/wikitext-103          # downloads the zip
    python data_scripts/prepare_wikitext103.py --archive wikitext-103-v1.zip --out data/wikitext-103
    python data_scripts/prepare_wikitext103.py --raw-dir wikitext-103 --out data/wikitext-103
    python data_scripts/prepare_wikitext103.py --archive wikitext-103-v1.zip --srcdict dict.txt ...

wikitext-103-v1.zip holds ``wikitext-103/wiki.{train,valid,test}.tokens``: already tokenized text,
one paragraph or heading per line, rare words already replaced by ``<unk>``. The files are binarized
as they are (``fairseq-preprocess --only-source``): every line ends with ``</s>`` (Transformer-XL's
``<eos>``), and the dictionary holds every word of the train split, without a count threshold;
words seen only in valid or test become ``<unk>``. Transformer-XL counts 267,735 symbols (its
``<eos>`` and every distinct train word, ``<unk>`` included); fairseq's dictionary has the same words
with ``<unk>`` as one of its 4 specials, i.e. 267,737 symbols, padded with ``madeupword`` entries to a
multiple of 8: 267,744 (the count fairseq users report, e.g. facebookresearch/fairseq#2299).
``--srcdict`` binarizes with a given ``dict.txt`` instead (to keep the vocabulary order of an existing
checkpoint).

OUT then holds:
    raw/wiki.{train,valid,test}.tokens   the extracted text (not with --raw-dir: read in place)
    data-bin/                            dict.txt and {train,valid,test}.{bin,idx} for fairseq-train
    downloads/wikitext-103-v1.zip        when the script downloaded it
    .stamps/                             what each finished step consumed: a rerun skips them
                                         (--force redoes them)

Checks: the archive's SHA-256 and the line count of each split (1,801,350 / 3,760 / 4,358, as
published with torchtext and Hugging Face datasets; no per-file checksum is published, so a
``--raw-dir`` is checked by its line counts), unless --skip-checksum (custom data: the members must
still be present and non-empty).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bootstrap  # noqa: E402,F401  (logs to stdout; this checkout's fairseq_srupp if not installed)

from fairseq_srupp.cli_args import positive_int
from fairseq_srupp.data.binarize import report, word_level_binarize
from fairseq_srupp.data.fetch import check_file, copy_zip_member, obtain_archive, open_zip, redo_hint, zip_member
from fairseq_srupp.data.files import atomic_dir, existing_dir, count_lines, fingerprint, require_nonempty
from fairseq_srupp.data.prep import SPLITS, PrepError, cli, count, log
from fairseq_srupp.data.preprocess import default_workers
from fairseq_srupp.data.steps import Steps
from fairseq_srupp.data.vocab import checked_srcdict

URL = "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-103-v1.zip"
# SHA-256 of wikitext-103-v1.zip, pinned identically by several independent loaders (Julia's
# CorpusLoaders/DataDeps registrations and others); torchtext pins its MD5 9ddaacaf6af0710eda8c456decff7832.
ZIP_SHA256 = "242ba0f20b329cfdf1ccc61e9e9e5b59becf189db7f7a81cd2a0e2fc31539590"
MEMBER_DIR = "wikitext-103"
FILES = {split: "wiki.{}.tokens".format(split) for split in SPLITS}
# Lines per file (torchtext's NUM_LINES for WikiText103; Hugging Face's wikitext-103-v1 card agrees).
LINES = {"train": 1801350, "valid": 3760, "test": 4358}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/wikitext-103", help="output directory (default: %(default)s)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--archive", help="an already downloaded wikitext-103-v1.zip (default: download it)")
    source.add_argument("--raw-dir", help="the unzipped wikitext-103 directory (holding wiki.*.tokens)")
    parser.add_argument("--url", default=URL, help="where to download the archive from (default: %(default)s)")
    parser.add_argument("--skip-checksum", action="store_true",
                        help="do not compare the checksum and line counts with the official data (custom data)")
    parser.add_argument("--srcdict", help="binarize with this fairseq dict.txt (keeps its order) instead of "
                                          "building one from the train split")
    parser.add_argument("--workers", type=positive_int, default=default_workers(), help="fairseq-preprocess workers")
    parser.add_argument("--force", action="store_true",
                        help="redo every step even if it is up to date, and replace outputs already in OUT "
                             "that no data script made")
    return parser.parse_args(argv)


def check_lines(split: str, lines: int, where: str, hint: str) -> None:
    if lines != LINES[split]:
        raise PrepError("{} has {} lines but WikiText-103's {} split has {}: {}; or pass --skip-checksum for "
                        "custom data".format(where, count(lines), split, count(LINES[split]), hint))


def prepare(args) -> Path:
    out = Path(args.out)
    srcdict = checked_srcdict(args.srcdict)
    steps = Steps(out, force=args.force, writes=["data-bin"] + (["raw"] if args.raw_dir is None else []))

    if args.raw_dir is not None:
        raw_dir = existing_dir(args.raw_dir, "--raw-dir", "give the unzipped wikitext-103 directory with "
                               "wiki.train/valid/test.tokens (or pass --archive wikitext-103-v1.zip)")
        if not (raw_dir / FILES["train"]).is_file() and (raw_dir / MEMBER_DIR / FILES["train"]).is_file():
            raw_dir = raw_dir / MEMBER_DIR  # the directory the archive was unzipped into
        files = {split: raw_dir / name for split, name in FILES.items()}
        for split, path in files.items():
            if not path.is_file():
                raise PrepError("{} not found: --raw-dir needs the unzipped wikitext-103 directory with "
                                "wiki.train/valid/test.tokens (or pass --archive wikitext-103-v1.zip)".format(path))
            require_nonempty(split, path)

        def verify():
            for split, path in files.items():
                check_lines(split, count_lines(path), str(path), "unzip wikitext-103-v1.zip again")

        if not args.skip_checksum:
            steps.run("verify", {split: fingerprint(path) for split, path in files.items()}, [], verify)
    else:
        archive, downloaded = obtain_archive(args.archive, args.url, out)
        hint = redo_hint(args.url, downloaded, archive)
        members = {split: "{}/{}".format(MEMBER_DIR, name) for split, name in FILES.items()}
        raw = out / "raw"
        files = {split: raw / name for split, name in FILES.items()}

        def extract():
            if not args.skip_checksum:
                check_file(archive, "wikitext-103-v1.zip", None, ZIP_SHA256, hint)
            with open_zip(archive, hint) as zf:
                infos = {split: zip_member(zf, member, archive, hint) for split, member in members.items()}
                for split, info in infos.items():
                    if info.file_size == 0:
                        raise PrepError("the {} split ({}:{}) is empty: every split needs text; {}".format(
                            split, archive, info.filename, hint))
                with atomic_dir(raw) as tmp:  # all three files or none
                    for split, info in infos.items():
                        lines = copy_zip_member(zf, info, tmp / FILES[split], archive, hint)
                        log("{}: {} lines -> {}".format(split, count(lines), files[split]))
                        if not args.skip_checksum:
                            check_lines(split, lines, "{}:{}".format(archive, info.filename), hint)

        steps.run("extract", dict(archive=fingerprint(archive), skip_checksum=args.skip_checksum,
                                  sha256=ZIP_SHA256), [raw], extract)

    data_bin = word_level_binarize(steps, out, files, srcdict=srcdict, threshold=0, workers=args.workers)
    report(data_bin, steps)
    return data_bin


def main(argv=None) -> int:
    args = parse_args(argv)
    return cli(lambda: prepare(args))


if __name__ == "__main__":
    sys.exit(main())
