#!/usr/bin/env python
"""Any text file → byte-level fairseq data (one token per byte, newline = ``</s>``).

    python data_scripts/prepare_char_text.py --text my_corpus.txt --out data/my_corpus

writes ``OUT/{train,valid,test}.tokens`` (a contiguous 90/5/5 split by default) and the binarized
``OUT/data-bin`` for ``fairseq-train`` / ``fairseq-eval-lm``. Idempotent: an existing
``OUT/data-bin`` with all splits is left alone unless ``--force``.
"""
import argparse
import sys
from pathlib import Path

from fairseq_srupp.data.char_level import binarize_char_corpus

SPLIT_FILES = ["dict.txt"] + ["{}.{}".format(s, e) for s in ("train", "valid", "test") for e in ("bin", "idx")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", required=True, help="input text file (any bytes)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--valid-fraction", type=float, default=0.05)
    parser.add_argument("--test-fraction", type=float, default=0.05)
    parser.add_argument("--force", action="store_true", help="rebuild even if OUT/data-bin is complete")
    args = parser.parse_args(argv)

    text = Path(args.text)
    if not text.is_file():
        print("error: {} is not a file".format(text), file=sys.stderr)
        return 2
    data_bin = Path(args.out) / "data-bin"
    if not args.force and all((data_bin / f).is_file() for f in SPLIT_FILES):
        print("{} is complete; nothing to do (--force rebuilds it)".format(data_bin))
        return 0
    try:
        binarize_char_corpus(text.read_bytes(), args.out, args.valid_fraction, args.test_fraction)
    except (ValueError, RuntimeError) as err:
        print("error: {}".format(err), file=sys.stderr)
        return 2
    print("wrote {}".format(data_bin))
    return 0


if __name__ == "__main__":
    sys.exit(main())
