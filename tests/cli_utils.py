"""Helpers for tests that drive fairseq's command-line tools in subprocesses."""
import os
import random
import re
import sys
import tempfile
from pathlib import Path

from fairseq_srupp.data.char_level import write_byte_tokens

import fork_server

BIN = Path(sys.executable).parent
USER_DIR = str(Path(__file__).resolve().parents[1] / "fairseq_srupp")
TRAIN_LOSS = re.compile(r"\| train_inner \|.* loss=([0-9.]+)")
VALID_LOSS = re.compile(r"\| valid \|.*\| loss ([0-9.]+)")
EVAL_LOSS = re.compile(r"Loss \(base 2\): ([0-9.]+)")


def tool_command(name):
    """A console script of this environment by name, or a Python script by its path (``*.py``)."""
    return [sys.executable, str(name)] if str(name).endswith(".py") else [str(BIN / name)]


def run_tool(name, *args, cwd=None, timeout=600):
    """Run a fairseq console script (in a temporary folder unless ``cwd``: fairseq-train makes its default
    --save-dir there even with --no-save); fail with its output if it exits non-zero."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory() as scratch:
        proc = fork_server.run([*tool_command(name), *args], cwd=cwd or scratch, env=env, timeout=timeout)
    assert proc.returncode == 0, "{} failed ({}):\n{}".format(name, proc.returncode, proc.stdout[-6000:])
    return proc.stdout


def synthetic_text(n_chars, seed=0):
    """Sentences from a small grammar: learnable within a few dozen updates."""
    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "my friend", "the old man", "a bird"]
    verbs = ["sees", "likes", "eats", "follows", "hears"]
    objects = ["the fish", "a ball", "the moon", "some bread", "the river"]
    out = []
    while sum(map(len, out)) < n_chars:
        out.append("{} {} {}.\n".format(rng.choice(subjects), rng.choice(verbs), rng.choice(objects)))
    return "".join(out).encode()


def make_char_data(root: Path, n_train=40000, n_valid=4000):
    """Write byte-token splits and binarize them with fairseq-preprocess; return the data dir."""
    text = synthetic_text(n_train + 2 * n_valid)
    splits = {"train": text[:n_train], "valid": text[n_train:n_train + n_valid], "test": text[n_train + n_valid:]}
    for name, data in splits.items():
        write_byte_tokens(data, root / "{}.txt".format(name))
    data_bin = root / "data-bin"
    run_tool("fairseq-preprocess", "--only-source", "--trainpref", root / "train.txt", "--validpref", root / "valid.txt",
             "--testpref", root / "test.txt", "--destdir", data_bin, "--workers", 1)
    return data_bin


TINY_TRAIN_ARGS = [
    "--user-dir", USER_DIR, "--task", "language_modeling", "--arch", "srupp_lm_tiny", "--cpu",
    "--hidden-size", 64, "--proj-size", 32, "--num-layers", 2, "--dropout", 0.0, "--attn-dropout", 0.0,
    "--tokens-per-sample", 64, "--sample-break-mode", "none", "--batch-size", 8,
    "--optimizer", "adam", "--lr", 0.01, "--lr-scheduler", "fixed", "--clip-norm", 1.0,
    "--log-format", "simple", "--log-interval", 5, "--seed", 1, "--num-workers", 0,
    "--no-epoch-checkpoints",
]


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_distributed_train(world_size, *args, timeout=600, program="fairseq-train"):
    """fairseq-train (or ``program``, see tool_command) with one CPU process per rank (gloo,
    legacy_ddp); return rank 0's output."""
    port = free_port()
    # PYTHONFAULTHANDLER: a rank that aborts in native code still reports where its Python was.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1")
    procs = []
    with tempfile.TemporaryDirectory() as scratch:  # the current folder, as in run_tool
        for rank in range(world_size):
            cmd = [*tool_command(program), *map(str, args), "--distributed-world-size", str(world_size),
                   "--distributed-rank", str(rank), "--distributed-init-method", "tcp://127.0.0.1:{}".format(port),
                   "--distributed-no-spawn", "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp"]
            procs.append(fork_server.popen(cmd, env=env, cwd=scratch))
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    for rank, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, "rank {} failed:\n{}".format(rank, out[-6000:])
    return outputs[0]


def stateful_eval_lm_loss(data_bin, checkpoint):
    """fairseq-eval-lm's base-2 loss on valid with the srupp_language_modeling settings the
    stateful training tests validate with (window 48, 3 streams)."""
    out = run_tool("fairseq-eval-lm", data_bin, "--user-dir", USER_DIR, "--task", "srupp_language_modeling",
                   "--path", checkpoint, "--cpu", "--gen-subset", "valid", "--tokens-per-sample", 32,
                   "--eval-unroll-size", 48, "--batch-size", 3, "--num-workers", 0)
    return float(EVAL_LOSS.findall(out)[-1])


def one_and_two_process_losses(*common):
    """Training losses of 1 process x 4 streams and of 2 legacy_ddp ranks x 2 streams (same global batch)."""
    single = run_tool("fairseq-train", *common, "--batch-size", 4)
    double = run_distributed_train(2, *common, "--batch-size", 2)
    single_losses = [float(v) for v in TRAIN_LOSS.findall(single)]
    double_losses = [float(v) for v in TRAIN_LOSS.findall(double)]
    print("1 process:", single_losses, "\n2 processes:", double_losses)
    return single_losses, double_losses


STATEFUL_TRAIN_ARGS = [
    "--user-dir", USER_DIR, "--task", "srupp_language_modeling", "--arch", "srupp_lm_tiny", "--cpu",
    "--hidden-size", 48, "--proj-size", 24, "--num-layers", 2, "--dropout", 0.0, "--attn-dropout", 0.0,
    "--tokens-per-sample", 32, "--optimizer", "radam", "--weight-decay", 0.01, "--lr", 0.005,
    "--lr-scheduler", "fixed", "--clip-norm", 1.0, "--log-format", "simple", "--log-interval", 1,
    "--seed", 1, "--num-workers", 0, "--no-epoch-checkpoints",
]


def zipf_markov_text(n_tokens, n_types=240, seed=0):
    """Words w0…w{n-1}: a frequent-word skeleton with predictable successors, so loss can fall and every
    frequency cluster gets used."""
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) for i in range(n_types)]
    words, lines, line = [], [], []
    prev = 0
    for _ in range(n_tokens):
        if rng.random() < 0.5:
            prev = (prev * 7 + 3) % 40  # predictable frequent words
        else:
            prev = rng.choices(range(n_types), weights)[0]
        line.append("w{}".format(prev))
        if len(line) == 12:
            lines.append(" ".join(line))
            line = []
    words.extend(lines)
    return "\n".join(words) + "\n"


def make_word_data(root: Path):
    """Word-level splits (zipf_markov_text) binarized with fairseq-preprocess; return the data dir."""
    for split, n, seed in (("train", 24000, 0), ("valid", 2400, 1), ("test", 2400, 2)):
        (root / "{}.txt".format(split)).write_text(zipf_markov_text(n, seed=seed))
    run_tool("fairseq-preprocess", "--only-source", "--trainpref", root / "train.txt", "--validpref",
             root / "valid.txt", "--testpref", root / "test.txt", "--destdir", root / "bin", "--workers", 1)
    return root / "bin"


# A word-level srupp_lm small enough for tests: adaptive softmax fitted to make_word_data's dictionary.
ADAPTIVE_ARGS = [
    "--criterion", "srupp_adaptive_loss", "--adaptive-softmax-cutoff", "24,80", "--adaptive-embed-dim", 32,
    "--adaptive-div-value", 2, "--emb-dropout", 0.0,
]
