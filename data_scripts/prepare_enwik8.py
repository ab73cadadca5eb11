#!/usr/bin/env python
"""enwik8 → byte-level fairseq data with the standard split (the paper's and Transformer-XL's).

    python data_scripts/prepare_enwik8.py --out data/enwik8                  # downloads enwik8.zip
    python data_scripts/prepare_enwik8.py --archive enwik8.zip --out data/enwik8
    python data_scripts/prepare_enwik8.py --raw-dir dir_with_enwik8 --out data/enwik8

enwik8.zip (http://mattmahoney.net/dc/enwik8.zip) holds one member, ``enwik8``: the first
100,000,000 bytes of an English Wikipedia XML dump. The first 90,000,000 bytes are train, the next
5,000,000 valid and the last 5,000,000 test. Every byte is one token (its decimal value; the newline
byte is fairseq's ``</s>``), and each binarized split holds exactly one token per byte. The
dictionary holds every distinct byte of the whole file, as the paper's vocabulary (205 symbols
with the newline; fairseq adds ``<s>``, ``<pad>`` and ``<unk>``); ``--vocab train`` builds it from the
train split instead.

OUT then holds:
    {train,valid,test}.tokens  the byte tokens, one text line per line of enwik8
    splits.json                bytes and lines per split
    dict.corpus.txt            the whole file's bytes with counts (the --vocab corpus dictionary)
    data-bin/                  dict.txt and {train,valid,test}.{bin,idx} for fairseq-train
    downloads/enwik8.zip       when the script downloaded it
    .stamps/                   what each finished step consumed: a rerun skips finished steps
                               (--force redoes them)

Checks: the archive's size and SHA-256 and the member's size and SHA-1 (the values Matt Mahoney
publishes for enwik8), unless --skip-checksum (for a custom archive; the zip structure, the
member and its size are still checked). For a custom file set the split with --split-sizes.
"""
import argparse
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bootstrap  # noqa: E402,F401  (logs to stdout; this checkout's fairseq_srupp if not installed)

from fairseq_srupp.cli_args import positive_int
from fairseq_srupp.data.binarize import byte_level_steps, report
from fairseq_srupp.data.fetch import archive_errors, check_file, obtain_archive, open_zip, redo_hint, zip_member
from fairseq_srupp.data.files import existing_dir, fingerprint
from fairseq_srupp.data.prep import PrepError, cli, count, log
from fairseq_srupp.data.preprocess import default_workers
from fairseq_srupp.data.steps import Steps
from fairseq_srupp.data.vocab import checked_srcdict

URL = "http://mattmahoney.net/dc/enwik8.zip"
MEMBER = "enwik8"
# enwik8.zip as served by mattmahoney.net: 36,445,475 bytes (also the download size on Hugging
# Face's enwik8 dataset card) with this SHA-256, pinned alike by several independent projects.
ZIP_SIZE = 36445475
ZIP_SHA256 = "547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc"
# The unzipped file: size and SHA-1 as Matt Mahoney publishes them with the Hutter Prize data
# (quoted, with the MD5 a1fa5ffddb56f4953e226637dabbb36a, in GluonNLP's enwik8 loader).
RAW_SIZE = 100000000
RAW_SHA1 = "57b8363b814821dc9d47aa4d41f58733519076b2"
STANDARD_SPLIT = (90000000, 5000000, 5000000)
# What the script writes under OUT (besides .stamps/ and downloads/).
OUTPUTS = ("train.tokens", "valid.tokens", "test.tokens", "splits.json", "dict.corpus.txt", "data-bin")


def split_sizes(text: str):
    try:
        sizes = tuple(int(v.replace("_", "")) for v in text.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or min(sizes) <= 0:
        raise argparse.ArgumentTypeError("expected three positive byte counts TRAIN,VALID,TEST, got {!r}".format(text))
    return sizes


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/enwik8", help="output directory (default: %(default)s)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--archive", help="an already downloaded enwik8.zip (default: download it into OUT/downloads)")
    source.add_argument("--raw-dir", help="a directory holding the unzipped file enwik8")
    parser.add_argument("--url", default=URL, help="where to download the archive from (default: %(default)s)")
    parser.add_argument("--split-sizes", type=split_sizes, default=STANDARD_SPLIT, metavar="TRAIN,VALID,TEST",
                        help="bytes per split, in file order; they must add up to the file size "
                             "(default: 90000000,5000000,5000000)")
    parser.add_argument("--skip-checksum", action="store_true",
                        help="do not compare sizes and checksums with the official enwik8 (custom archives)")
    parser.add_argument("--vocab", choices=["corpus", "train"], default="corpus",
                        help="dictionary from every byte of the file (the paper's) or from the train split")
    parser.add_argument("--srcdict", help="binarize with this fairseq dict.txt instead")
    parser.add_argument("--workers", type=positive_int, default=default_workers(), help="fairseq-preprocess workers")
    parser.add_argument("--force", action="store_true",
                        help="redo every step even if it is up to date, and replace outputs already in OUT "
                             "that no data script made")
    return parser.parse_args(argv)


def prepare(args) -> Path:
    out = Path(args.out)
    sizes = args.split_sizes
    total = sum(sizes)
    srcdict = checked_srcdict(args.srcdict)
    steps = Steps(out, force=args.force, writes=OUTPUTS)
    size_hint = ("the standard split needs the {} bytes of enwik8; for another file pass "
                 "--split-sizes TRAIN,VALID,TEST adding up to its size".format(count(RAW_SIZE)))

    archive = None
    if args.raw_dir is not None:
        raw = existing_dir(args.raw_dir, "--raw-dir", "give the directory holding the unzipped file enwik8 "
                           "(or pass --archive enwik8.zip)") / MEMBER
        if not raw.is_file():
            raise PrepError("{} not found: unzip enwik8.zip into {} or pass --archive enwik8.zip".format(
                raw, args.raw_dir))
        where, source = str(raw), dict(raw=fingerprint(raw))
        read = raw.read_bytes
    else:
        archive, downloaded = obtain_archive(args.archive, args.url, out)
        hint = redo_hint(args.url, downloaded, archive)
        where, source = "{}:{}".format(archive, MEMBER), dict(archive=fingerprint(archive))

        def read():
            with open_zip(archive, hint) as zf:
                info = zip_member(zf, MEMBER, archive, hint)
                check_size(info.file_size)
                with archive_errors(archive, hint):
                    return zf.read(info)  # zipfile checks the CRC

    def check_size(size: int):
        if size != total:
            raise PrepError("{} has {} bytes, but the split sizes add up to {}: {}".format(
                where, count(size), count(total), size_hint))

    def verify():
        if archive is not None and not args.skip_checksum:
            check_file(archive, "enwik8.zip", ZIP_SIZE, ZIP_SHA256, hint)
        data = read()
        check_size(len(data))
        if not args.skip_checksum:
            digest = hashlib.sha1(data).hexdigest()
            if digest != RAW_SHA1:
                raise PrepError("{} has SHA-1 {} but enwik8 has {}: pass --skip-checksum for a custom file"
                                .format(where, digest, RAW_SHA1))

    steps.run("verify", dict(source, split=sizes, skip_checksum=args.skip_checksum, zip_sha256=ZIP_SHA256,
                             sha1=RAW_SHA1), [], verify)

    def read_parts():
        data = read()
        check_size(len(data))
        a, b = sizes[0], sizes[0] + sizes[1]
        log("{}: {} bytes -> train {} / valid {} / test {}".format(where, count(len(data)), *map(count, sizes)))
        return data[:a], data[a:b], data[b:]

    source.update(split=sizes)
    data_bin = byte_level_steps(steps, out, read_parts, source, vocab=args.vocab, srcdict=srcdict,
                                workers=args.workers)
    report(data_bin, steps)
    return data_bin


def main(argv=None) -> int:
    args = parse_args(argv)
    return cli(lambda: prepare(args))


if __name__ == "__main__":
    sys.exit(main())
