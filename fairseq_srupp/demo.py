"""``make demo``: train a tiny SRU++ byte-level LM with fairseq's own tools and report its BPC.

Default corpus: the English reference text that ships inside every CPython install
(``pydoc_data.topics``, about 0.47 MB), so no download is needed. ``--data FILE`` trains on any
text file instead. Steps, each a fairseq command run in a subprocess (printed before it runs):

1. split the bytes 90/5/5 into train/valid/test and write one token per byte;
2. ``fairseq-preprocess --only-source`` → ``OUT/data-bin``;
3. ``fairseq-train --task srupp_language_modeling --arch srupp_lm_tiny`` on CPU: contiguous streams
   with carried state as in the paper, but Adam (0.9, 0.98) with a short warm-up and cosine decay,
   which learns faster in a 1200-update run than the paper's RAdam + 16k-update warm-up recipe
   (made for 400k updates; ``--optimizer radam --lr-scheduler srupp_cosine`` reproduces it) →
   ``OUT/checkpoints``. It runs exactly ``--max-update`` updates (no time cap, so a slow or busy
   machine trains as long as needed and the BPC means the same everywhere), printing fairseq's log
   every 50 updates with the estimated time left;
4. ``fairseq-eval-lm`` with the same task on valid and test → bits per byte (BPC), with the window
   ``--eval-window`` that the sample at the end uses too.

Threads: the CPU kernels run OpenMP regions on every core. With fairseq's default waiting policy
a thread that finishes early spins, which starves a core that another process also needs; the
demo therefore runs fairseq with ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep) unless the
environment sets it (see README for the measured effect).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fairseq_srupp.cli_args import child_error_line, non_negative_int, positive_float, positive_int
from fairseq_srupp.data.char_level import binarize_char_corpus, module_command, run_streaming, split_bytes
from fairseq_srupp.errors import not_a_file

USER_DIR = str(Path(__file__).resolve().parent)
EVAL_LOSS = re.compile(r"Loss \(base 2\): ([0-9.]+)")
# Patterns for fairseq's --log-file, which holds the messages without the logger prefix.
TRAIN_WPS = re.compile(r"epoch \d+ \| loss [0-9.]+ \|.*\| wps ([0-9.]+)")
VALID_POINT = re.compile(r"valid on '\w+' subset \| loss ([0-9.]+) \|.*\| num_updates (\d+)")
TRAIN_POINT = re.compile(r"epoch \d+ \| loss ([0-9.]+) \|.*\| num_updates (\d+)")
# Updates done, in fairseq's --log-format simple lines (every --log-interval, epoch and validation summaries).
PROGRESS = re.compile(r"num_updates[= ](\d+)")
EVAL_STREAMS = 4
SAMPLE_TOP_K = 10


def builtin_corpus() -> bytes:
    """Python's own documentation topics: real English prose with code samples."""
    from pydoc_data.topics import topics

    return "\n".join(topics[key] for key in sorted(topics)).encode("utf-8")


def run_training(args_list, planned_updates: int) -> int:
    """Run fairseq-train, echoing its log and, after each progress line, the estimated time left.

    Returns the number of updates it ran (fairseq stops exactly at ``--max-update``).
    """
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see the module docstring
    cmd = module_command("fairseq_cli.train", args_list)
    done, first = 0, None
    error_line = None  # the child's own account of a failure, for the one-line report
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                          env=env) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            error_line = child_error_line([line]) or error_line
            match = PROGRESS.search(line)
            if match and int(match.group(1)) > done:
                done = int(match.group(1))
                now = time.time()
                if first is None:
                    first = (now, done)
                else:
                    left = (now - first[0]) / (done - first[1]) * (planned_updates - done)
                    sys.stdout.write("  demo: {} of {} updates, about {:.1f} min left\n".format(
                        done, planned_updates, left / 60))
            sys.stdout.flush()
    if proc.returncode != 0:
        raise SystemExit("error: fairseq-train failed (exit status {}){}".format(
            proc.returncode, ": " + error_line if error_line else ""))
    return done


def plot_learning_curve(train_log: str, path: Path) -> bool:
    """Validation (and per-epoch training) bits per byte against updates; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for pattern, label in ((TRAIN_POINT, "train (epoch average)"), (VALID_POINT, "valid")):
        points = sorted({int(u): float(loss) for loss, u in pattern.findall(train_log)}.items())
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, label=label)
    ax.set_xlabel("updates")
    ax.set_ylabel("bits per byte")
    ax.set_title("SRU++ demo learning curve")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def generate_sample(save_dir: Path, data_bin: Path, args) -> str:
    """Continue ``args.prompt`` with the trained model, newline bytes included (as ``srupp-sample``)."""
    import torch

    from fairseq_srupp.sample_cli import load_model
    from fairseq_srupp.sampling import TextCodec, set_window, stream_tokens

    model, _ = load_model(str(save_dir / "checkpoint_best.pt"), str(data_bin), cpu=True)
    set_window(model, args.eval_window)  # the window the BPC above was measured with
    codec = TextCodec(model.decoder.dictionary)
    to_text = codec.decoder(after=args.prompt)
    rng = torch.Generator().manual_seed(args.seed)
    tokens = stream_tokens(model, codec.encode(args.prompt), args.sample_bytes, top_k=SAMPLE_TOP_K, generator=rng)
    return args.prompt + "".join(to_text(token) for token in tokens)


def parse_args(argv=None):
    # Sizes and counts are checked here: fairseq-train would take --max-update 0 as "no limit" and
    # answer others with its whole usage text.
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a text file to train on (default: Python's built-in documentation)")
    parser.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    parser.add_argument("--arch", default="srupp_lm_tiny", help="an srupp_lm architecture (default: srupp_lm_tiny)")
    parser.add_argument("--max-update", type=positive_int, default=1200)
    parser.add_argument("--tokens-per-sample", type=positive_int, default=256, help="training unroll length")
    parser.add_argument("--eval-window", type=positive_int, default=512,
                        help="attention window of evaluation and of the sample at the end")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="training streams")
    parser.add_argument("--lr", type=positive_float, default=2e-3)
    parser.add_argument("--log-interval", type=positive_int, default=50, help="updates between progress lines")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--prompt", default="The ", help="text the sample at the end continues")
    parser.add_argument("--sample-bytes", type=non_negative_int, default=400, help="bytes to generate (0: no sample)")
    return parser.parse_args(argv)


def check_arch(arch: str) -> None:
    """The demo trains with srupp_language_modeling and SRU++-only flags (--eval-window): an
    srupp_lm architecture is needed, and any other is refused before anything is written."""
    from fairseq_srupp.models.presets import BY_NAME

    if arch not in BY_NAME:
        raise SystemExit("error: --arch {} is not an srupp_lm architecture; the demo trains one of: {}".format(
            arch, ", ".join(BY_NAME)))


def read_corpus(data):
    """(bytes, name) of ``--data`` (default: the built-in corpus), refused when it is too small to split."""
    if data:
        path = Path(data)
        if not path.is_file():
            raise SystemExit("error: --data {} {}: give a text file to train on".format(path, not_a_file(path)))
        corpus, corpus_name = path.read_bytes(), str(path)
    else:
        corpus, corpus_name = builtin_corpus(), "Python's built-in documentation (pydoc_data.topics)"
    try:
        split_bytes(corpus)  # its size check, before --out is made
    except ValueError as err:
        raise SystemExit("error: --data {}: {}".format(corpus_name, err))
    return corpus, corpus_name


def make_out_dir(given: str) -> Path:
    """The --out directory, created if missing; an existing file there is refused, not replaced."""
    out = Path(given).resolve()
    if out.exists() and not out.is_dir():
        raise SystemExit("error: --out {} is a file: give a directory (created if missing) for the demo's "
                         "data, checkpoints and logs".format(given))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file on the way, no permission
        raise SystemExit("error: --out {}: cannot create it ({})".format(given, err.strerror or err))
    return out


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    check_arch(args.arch)
    corpus, corpus_name = read_corpus(args.data)
    out = make_out_dir(args.out)  # only once every input is known good: a refused run leaves no folder behind
    print("corpus: {}".format(corpus_name))
    try:
        data_bin = binarize_char_corpus(corpus, out)
    except ValueError as err:
        raise SystemExit("error: {}".format(err))
    save_dir = out / "checkpoints"
    log_file = save_dir / "train.log"
    if save_dir.exists():  # the demo's own output: a rerun trains afresh instead of resuming
        shutil.rmtree(save_dir)
    save_dir.mkdir(parents=True)
    updates = run_training([
        data_bin, "--user-dir", USER_DIR, "--task", "srupp_language_modeling", "--arch", args.arch, "--cpu",
        "--tokens-per-sample", args.tokens_per_sample, "--eval-window", args.eval_window,
        "--batch-size", args.batch_size, "--batch-size-valid", EVAL_STREAMS,
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--weight-decay", 0.01, "--lr", args.lr,
        "--lr-scheduler", "cosine", "--warmup-updates", 100, "--warmup-init-lr", 1e-7,
        "--max-update", args.max_update, "--clip-norm", 1.0,
        "--validate-interval-updates", 400, "--save-interval-updates", 400,
        "--keep-interval-updates", 1, "--no-epoch-checkpoints", "--log-interval", args.log_interval, "--log-format", "simple",
        "--num-workers", 0, "--seed", args.seed, "--save-dir", save_dir, "--log-file", log_file,
    ], args.max_update)
    train_end = time.time()
    train_log = log_file.read_text()
    curve = save_dir / "learning_curve.png"
    has_curve = plot_learning_curve(train_log, curve)

    bpc = {}
    for split in ("valid", "test"):
        log = run_streaming("fairseq_cli.eval_lm", [
            data_bin, "--user-dir", USER_DIR, "--task", "srupp_language_modeling",
            "--path", save_dir / "checkpoint_best.pt", "--cpu", "--gen-subset", split,
            "--batch-size", EVAL_STREAMS,  # segments = the checkpoint's window (--eval-window) "--num-workers", 0,
        ])
        bpc[split] = float(EVAL_LOSS.findall(log)[-1])
    wps = TRAIN_WPS.findall(train_log)
    sample = generate_sample(save_dir, data_bin, args) if args.sample_bytes > 0 else None

    print("\n==================== SRU++ demo: results ====================")
    print("model            {} (checkpoint {})".format(args.arch, save_dir / "checkpoint_best.pt"))
    print("data             {} (binarized in {})".format(corpus_name, data_bin))
    print("updates          {} of {} planned".format(updates, args.max_update))
    if wps:
        print("training speed   {:,.0f} tokens/s on CPU".format(float(wps[-1])))
    print("valid BPC        {:.3f} bits per byte (window {})".format(bpc["valid"], args.eval_window))
    print("test  BPC        {:.3f} bits per byte (window {})".format(bpc["test"], args.eval_window))
    print("wall time        {:.0f} s (training {:.0f} s)".format(time.time() - start, train_end - start))
    if sample is not None:
        print("\nsample ({} bytes after the prompt, top-{} sampling, window {}, incremental decoding):\n{}\n{}\n{}".format(
            args.sample_bytes, SAMPLE_TOP_K, args.eval_window, "-" * 60, sample, "-" * 60))
        print("more: srupp-sample --path {} --prompt {!r} -n 1000 --top-k {}".format(
            save_dir / "checkpoint_best.pt", args.prompt, SAMPLE_TOP_K))
    print("\nwritten:")
    print("  data             {}".format(data_bin))
    print("  checkpoints      {}".format(save_dir))
    print("  training log     {}".format(log_file))
    if has_curve:
        print("  learning curve   {}".format(curve))
    else:
        print("  learning curve   skipped (pip install matplotlib)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
