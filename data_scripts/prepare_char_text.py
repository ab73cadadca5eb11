#!/usr/bin/env python
"""Any text file → byte-level fairseq data (one token per byte, newline = ``</s>``).

    python data_scripts/prepare_char_text.py --text my_corpus.txt --out data/my_corpus

writes ``OUT/{train,valid,test}.tokens`` (a contiguous 90/5/5 split by default, cut at line
boundaries) and the binarized ``OUT/data-bin`` for ``fairseq-train`` / ``fairseq-eval-lm``.
Idempotent: finished steps are skipped while their inputs are unchanged (``--force`` redoes them).

Shorthand for ``prepare_text.py --level char --text FILE``; see that script for more options.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prepare_text  # noqa: E402  (the generic script next to this one)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", required=True, help="input text file (any bytes)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--valid-fraction", type=float, default=0.05)
    parser.add_argument("--test-fraction", type=float, default=0.05)
    parser.add_argument("--force", action="store_true",
                        help="redo every step even if it is up to date, and replace outputs already in OUT "
                             "that no data script made")
    args = parser.parse_args(argv)
    forwarded = ["--level", "char", "--text", args.text, "--out", args.out,
                 "--valid-fraction", str(args.valid_fraction), "--test-fraction", str(args.test_fraction)]
    return prepare_text.main(forwarded + (["--force"] if args.force else []))


if __name__ == "__main__":
    sys.exit(main())
