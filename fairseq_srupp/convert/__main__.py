"""Convert the SRU++ paper's checkpoints to fairseq ``srupp_lm`` checkpoints.

  python -m fairseq_srupp.convert enwik8 --paper-checkpoint P.pt --dict DATA/dict.txt --out OUT.pt --corpus enwik8
  python -m fairseq_srupp.convert wt103 --paper-checkpoint P.pt --corpus wiki.train.tokens --out-dir OUT
  python -m fairseq_srupp.convert lm1b --paper-checkpoint P.pt --vocab 1b_word_vocab.txt --out-dir OUT

The word-level commands write OUT/model.pt and OUT/dict.txt; binarize the text with that dictionary.
"""
import argparse
import logging
import sys
from pathlib import Path

from fairseq_srupp.data.files import existing_file
from fairseq_srupp.errors import SRUppUserError

from . import convert_enwik8, convert_word_level
from .enwik8 import EVAL_WINDOW
from .word_level import DATASETS

# Options naming input files: checked first, so that a directory or a typo gets one clear line.
INPUT_FILES = ("paper_checkpoint", "dict", "corpus", "vocab")


def parse_byte_list(text: str):
    return [int(v) for v in text.split(",") if v.strip()]


def add_word_level_parser(sub, dataset: str, help_text: str):
    setup = DATASETS[dataset]
    parser = sub.add_parser(dataset, help=help_text, description=help_text)
    parser.add_argument("--paper-checkpoint", required=True,
                        help="state dict saved by the paper's train_{}.py".format(dataset))
    parser.add_argument("--out-dir", required=True, help="directory for model.pt and dict.txt")
    vocab = parser.add_mutually_exclusive_group(required=True)
    vocab.add_argument("--vocab", metavar="FILE",
                       help="the paper's vocabulary in index order: one token (or 'token count') per line{}".format(
                           " (1b_word_vocab.txt)" if dataset == "lm1b" else ""))
    if dataset == "wt103":
        vocab.add_argument("--corpus", metavar="FILE",
                           help="wiki.train.tokens: rebuild the paper's vocabulary from it ('<eos>', then the "
                                "training words by count, ties in first-appearance order)")
    parser.add_argument("--eos-symbol", default=setup.eos,
                        help="the paper's end-of-sentence symbol, mapped to fairseq's </s> (default: %(default)s)")
    parser.add_argument("--unk-symbol", default=setup.unk,
                        help="the paper's unknown-word symbol, mapped to fairseq's <unk> (default: %(default)s)")
    tie = parser.add_mutually_exclusive_group()
    tie.add_argument("--tied-projections", dest="tied", action="store_const", const=True, default=None,
                     help="input and output projections shared (default: inferred from the state dict)")
    tie.add_argument("--untied-projections", dest="tied", action="store_const", const=False,
                     help="separate input and output projections")
    parser.add_argument("--num-heads", type=int, default=1, help="attention heads (default: %(default)s)")
    add_window_option(parser, setup.eval_window)
    add_force_option(parser, "model.pt or dict.txt in --out-dir")
    return parser


def add_force_option(parser, outputs: str) -> None:
    parser.add_argument("--force", action="store_true",
                        help="replace an existing {} that differs from the converted one (default: refuse; "
                             "the same content again is fine)".format(outputs))


def add_window_option(parser, window: int) -> None:
    parser.add_argument("--eval-window", type=int, default=window,
                        help="evaluation segment = attention window stored in the checkpoint, also used by "
                             "generation (default: %(default)s, the paper's)")


def check_outputs(args) -> None:
    """Refuse an output path of the wrong kind before the (possibly long) conversion."""
    if getattr(args, "out", None) is not None and Path(args.out).is_dir():
        raise SRUppUserError("--out {} is a directory: give the path of the checkpoint file to write, e.g. "
                             "{}".format(args.out, Path(args.out) / "model.pt"))
    if getattr(args, "out_dir", None) is not None and Path(args.out_dir).is_file():
        raise SRUppUserError("--out-dir {} is a file: give a directory for model.pt and dict.txt".format(args.out_dir))


def print_eval_command(data_bin: str, model: Path, window: int, prepend_eos: bool = False) -> None:
    # fairseq-eval-lm builds its task from the command line, not from the checkpoint: the stateful
    # task must be named there; the window (the model's eval_window) comes from the checkpoint.
    user_dir = Path(__file__).resolve().parents[1]
    print("then evaluate as the paper does (one contiguous stream, window {}):".format(window))
    print("  fairseq-eval-lm {d} --user-dir {u} --task srupp_language_modeling --path {m} --gen-subset test "
          "--batch-size 1{p}".format(d=data_bin, u=user_dir, m=model,
                                             p=" --prepend-eos" if prepend_eos else ""))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fairseq_srupp.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
    add_window_option(enwik8, EVAL_WINDOW)
    add_force_option(enwik8, "--out file")
    add_word_level_parser(sub, "wt103", "the paper's WikiText-103 Model state dict (writes model.pt + dict.txt)")
    add_word_level_parser(sub, "lm1b", "the paper's Billion Word Model state dict (writes model.pt + dict.txt)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        for name in INPUT_FILES:
            if getattr(args, name, None) is not None:
                existing_file(getattr(args, name), "--" + name.replace("_", "-"))
        check_outputs(args)
        if args.dataset == "enwik8":
            out = convert_enwik8(
                args.paper_checkpoint,
                args.dict,
                args.out,
                corpus=args.corpus,
                vocabulary=args.vocab_bytes,
                num_heads=args.num_heads,
                allow_missing=args.allow_missing,
                eval_window=args.eval_window,
                overwrite=args.force,
            )
            print("wrote {}".format(out))
            print_eval_command(str(Path(args.dict).parent), out, args.eval_window)
            return 0
        result = convert_word_level(
            args.paper_checkpoint,
            args.out_dir,
            dataset=args.dataset,
            vocab_file=args.vocab,
            corpus=getattr(args, "corpus", None),
            eos_symbol=args.eos_symbol,
            unk_symbol=args.unk_symbol,
            tied_projections=args.tied,
            num_heads=args.num_heads,
            eval_window=args.eval_window,
            overwrite=args.force,
        )
    except ValueError as err:
        print("error: {}".format(err), file=sys.stderr)
        return 2
    except OSError as err:  # permission denied, disk full, ...
        print("error: {}{}".format(err.strerror or err, " ({})".format(err.filename) if err.filename else ""),
              file=sys.stderr)
        return 2
    out_dir = result.model.parent
    print("wrote {} and {}".format(result.model, result.dictionary))
    print("  {} symbols (fairseq's <s> <pad> </s> <unk>, then the paper's words in paper order; the paper's {} is "
          "</s>, its {} is <unk>); cutoffs {}; {} projections".format(
              result.num_symbols, args.eos_symbol, args.unk_symbol, ",".join(map(str, result.cutoffs)),
              "tied" if result.tied_projections else "untied"))
    print("Binarize the text with THIS dictionary (its order is the model's; a dictionary fairseq builds itself "
          "would not match):")
    print("  fairseq-preprocess --only-source --srcdict {d} --testpref TEST.txt --destdir DATA-BIN".format(
        d=result.dictionary))
    if args.dataset == "lm1b":
        print("  (one sentence per line. The paper's stream has ONE <S> between consecutive sentences and one before "
              "the first, which is what --prepend-eos gives: fairseq's </s> after every line plus one at the start.)")
    print_eval_command("DATA-BIN", result.model, args.eval_window, DATASETS[args.dataset].prepend_eos)
    print("or load it in Python: SRUppLanguageModel.from_pretrained('{}')".format(out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
