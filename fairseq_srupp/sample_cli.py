"""``srupp-sample``: write text sampled from a trained srupp_lm checkpoint, as it is produced, across lines.

Examples::

    srupp-sample --path checkpoints/my_corpus/checkpoint_best.pt --prompt "ROMEO:" -n 500 --top-k 10
    srupp-sample --path CKPT --data data/my_corpus/data-bin --prompt-file prompt.txt -n 2000 --top-p 0.9 --seed 1

``-n`` counts tokens: bytes for a char-level model, words for a word-level one. The prompt is
echoed, then the continuation streams to stdout (see :mod:`fairseq_srupp.sampling` for the rule).
"""
import argparse
import logging
import os
import sys

import torch

from fairseq_srupp.errors import SRUppUserError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="srupp-sample", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--path", required=True, help="a checkpoint written by fairseq-train (checkpoint_best.pt)")
    parser.add_argument("--data", help="data directory with the dict.txt the model was trained with "
                        "(default: the one stored in the checkpoint)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="text to continue ('' starts from a fresh line)")
    source.add_argument("--prompt-file", help="a UTF-8 file whose text is continued")
    parser.add_argument("-n", "--num-tokens", type=int, required=True,
                        help="tokens to generate: bytes (char level) or words (word level)")
    parser.add_argument("--top-k", type=int, default=0, help="draw only from the k most probable tokens (0: all)")
    parser.add_argument("--top-p", type=float, default=1.0,
                        help="draw only from the smallest set of most probable tokens reaching probability p")
    parser.add_argument("--temperature", type=float, default=1.0, help="divide log-probabilities by T (0: greedy)")
    parser.add_argument("--seed", type=int, help="random seed, for a reproducible sample (default: random)")
    parser.add_argument("--window", type=int,
                        help="attention window W of the decoder (default: the checkpoint's eval_window)")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even if a GPU is available")
    parser.add_argument("--no-echo", action="store_true", help="print only the continuation, not the prompt")
    return parser.parse_args(argv)


def read_prompt(args) -> str:
    if args.prompt is not None:
        return args.prompt
    from fairseq_srupp.data.files import existing_file

    path = existing_file(args.prompt_file, "--prompt-file")  # the data scripts' messages for a directory / none
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise SRUppUserError("--prompt-file {} is not UTF-8 text ({})".format(args.prompt_file, err))


def load_model(path: str, data=None, cpu=False):
    """Checkpoint → (model in eval mode, its config); the model on the GPU when there is one and not ``cpu``."""
    from fairseq import checkpoint_utils

    if not os.path.isfile(path):
        raise SRUppUserError("--path {} is not a checkpoint file".format(path))
    overrides = {}
    if data is not None:
        if not os.path.isfile(os.path.join(data, "dict.txt")):
            raise SRUppUserError("--data {} has no dict.txt: give the data-bin directory the model was trained "
                                 "on".format(data))
        overrides["data"] = data
    try:
        models, cfg, _ = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides=overrides)
    except FileNotFoundError as err:
        raise SRUppUserError("{}: pass --data with the data-bin directory (dict.txt) the model was trained "
                             "on".format(err))
    model = models[0]
    if not hasattr(model.decoder, "get_incremental_state"):
        raise SRUppUserError("{} is not a language model checkpoint".format(path))
    if torch.cuda.is_available() and not cpu:
        model = model.cuda()
    return model.eval(), cfg


# The seeds torch.Generator.manual_seed takes (a negative one stands for seed + 2**64).
SEED_RANGE = (-2 ** 63, 2 ** 64 - 1)


def check_seed(seed) -> None:
    if seed is not None and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise SRUppUserError("--seed must be an integer from -2**63 to 2**64 - 1 (torch's seed range), got {}".format(
            seed))


def write_stream(out, prompt, tokens, to_text) -> None:
    """Write the prompt (None: not echoed), then each token's text as it comes, then a newline.

    A reader that closes the pipe early (``srupp-sample ... | head``) ends the output quietly, as
    other Unix filters do: see :func:`stop_writing_to_closed_stdout`.
    """
    try:
        if prompt is not None:
            out.write(prompt)
        for token in tokens:
            out.write(to_text(token))
            out.flush()
        out.write("\n")
        out.flush()
    except BrokenPipeError:
        stop_writing_to_closed_stdout()


def stop_writing_to_closed_stdout() -> None:
    """Point stdout's descriptor at /dev/null, so that the flush at exit finds no closed pipe to report
    (the recipe of Python's documentation, "Note on SIGPIPE")."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # a replaced sys.stdout (tests): nothing left to flush
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def main(argv=None):
    args = parse_args(argv)
    import fairseq_srupp  # noqa: F401  (registers srupp_lm; one-line errors)
    from fairseq.data import encoders

    from fairseq_srupp.sampling import TextCodec, check_sampling_args, set_window, stream_tokens

    logging.basicConfig(format="%(levelname)s: %(message)s", level=logging.WARNING, stream=sys.stderr, force=True)
    if args.num_tokens < 0:
        raise SRUppUserError("-n must be >= 0, got {}".format(args.num_tokens))
    check_sampling_args(args.top_k, args.top_p, args.temperature)
    check_seed(args.seed)
    prompt = read_prompt(args)
    model, cfg = load_model(args.path, args.data, args.cpu)
    set_window(model, args.window)
    # A word-level model trained with --tokenizer (e.g. moses) reads its prompt the same way.
    tokenizer = encoders.build_tokenizer(cfg.tokenizer) if cfg.get("tokenizer") is not None else None
    codec = TextCodec(model.decoder.dictionary, tokenizer)
    prompt_ids = codec.encode(prompt)
    seed = args.seed if args.seed is not None else int(torch.randint(0, 2 ** 31 - 1, ()).item())
    if args.seed is None:
        print("seed: {} (pass --seed {} to draw this sample again)".format(seed, seed), file=sys.stderr)
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    tokens = stream_tokens(model, prompt_ids, args.num_tokens, args.top_k, args.top_p, args.temperature, generator)
    write_stream(sys.stdout, None if args.no_echo else prompt, tokens, codec.decoder(after=prompt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
