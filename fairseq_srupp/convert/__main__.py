"""Command line: ``python -m fairseq_srupp.convert enwik8 --paper-checkpoint ... --dict ... --out ...``."""
import argparse
import logging
import sys

from . import convert_enwik8


def parse_byte_list(text: str):
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fairseq_srupp.convert", description=__doc__)
    sub = parser.add_subparsers(dest="dataset", required=True)
    enwik8 = sub.add_parser("enwik8", help="the paper's char-level enwik8 Model state dict")
    enwik8.add_argument("--paper-checkpoint", required=True, help="state dict saved by the paper's train_enwik8.py")
    enwik8.add_argument("--dict", required=True, help="dict.txt of the fairseq-binarized enwik8 data")
    enwik8.add_argument("--out", required=True, help="where to write the fairseq checkpoint")
    vocab = enwik8.add_mutually_exclusive_group(required=True)
    vocab.add_argument("--corpus", help="raw enwik8 file: the paper's vocabulary is its sorted distinct bytes")
    vocab.add_argument("--vocab-bytes", type=parse_byte_list, help="comma-separated byte values of the paper vocabulary, in order")
    enwik8.add_argument("--num-heads", type=int, default=1)
    enwik8.add_argument("--allow-missing", action="store_true", help="accept a dict.txt lacking some paper bytes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        out = convert_enwik8(
            args.paper_checkpoint,
            args.dict,
            args.out,
            corpus=args.corpus,
            vocabulary=args.vocab_bytes,
            num_heads=args.num_heads,
            allow_missing=args.allow_missing,
        )
    except (ValueError, FileNotFoundError) as err:
        print("error: {}".format(err), file=sys.stderr)
        return 2
    print("wrote {}".format(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
