"""Word-level srupp_lm (projected adaptive softmax) through fairseq-train / fairseq-eval-lm.

The criterion's loss path (only the target's cluster) and fairseq-eval-lm's path
(``get_normalized_probs`` over the whole vocabulary) must report the same loss.
"""
import random

import pytest
from cli_utils import EVAL_LOSS, STATEFUL_TRAIN_ARGS, TRAIN_LOSS, USER_DIR, VALID_LOSS, run_distributed_train, run_tool

ADAPTIVE_ARGS = [
    "--criterion", "srupp_adaptive_loss", "--adaptive-softmax-cutoff", "24,80", "--adaptive-embed-dim", 32,
    "--adaptive-div-value", 2, "--emb-dropout", 0.0,
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


@pytest.fixture(scope="module")
def word_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("word_level")
    for split, n, seed in (("train", 24000, 0), ("valid", 2400, 1), ("test", 2400, 2)):
        (root / "{}.txt".format(split)).write_text(zipf_markov_text(n, seed=seed))
    run_tool("fairseq-preprocess", "--only-source", "--trainpref", root / "train.txt", "--validpref",
             root / "valid.txt", "--testpref", root / "test.txt", "--destdir", root / "bin", "--workers", 1)
    return root / "bin"


def test_train_then_eval_lm_agree_on_the_adaptive_softmax_loss(word_data, tmp_path):
    log = run_tool("fairseq-train", word_data, *STATEFUL_TRAIN_ARGS, *ADAPTIVE_ARGS, "--batch-size", 4,
                   "--max-update", 60, "--lr", 0.01, "--eval-unroll-size", 48, "--batch-size-valid", 3, "--log-interval", 5,
                   "--save-dir", tmp_path / "ckpt")
    train_losses = [float(v) for v in TRAIN_LOSS.findall(log)]
    valid_loss = float(VALID_LOSS.findall(log)[-1])
    print("train losses", train_losses, "valid", valid_loss)
    assert train_losses[-1] < train_losses[0] - 1.0  # bits per word
    out = run_tool("fairseq-eval-lm", word_data, "--user-dir", USER_DIR, "--task", "srupp_language_modeling",
                   "--path", tmp_path / "ckpt" / "checkpoint_last.pt", "--cpu", "--gen-subset", "valid",
                   "--tokens-per-sample", 32, "--eval-unroll-size", 48, "--batch-size", 3, "--num-workers", 0)
    eval_loss = float(EVAL_LOSS.findall(out)[-1])
    print("validation during training {} | fairseq-eval-lm {}".format(valid_loss, eval_loss))
    assert eval_loss == pytest.approx(valid_loss, abs=6e-4)  # training prints 3 decimals


def test_legacy_ddp_two_processes_match_one_process(word_data):
    common = [word_data, *STATEFUL_TRAIN_ARGS, *ADAPTIVE_ARGS, "--max-update", 6, "--disable-validation", "--no-save"]
    single = run_tool("fairseq-train", *common, "--batch-size", 4)
    double = run_distributed_train(2, *common, "--batch-size", 2)  # legacy_ddp: 2 ranks x 2 streams
    single_losses = [float(v) for v in TRAIN_LOSS.findall(single)]
    double_losses = [float(v) for v in TRAIN_LOSS.findall(double)]
    print("1 process:", single_losses, "\n2 processes:", double_losses)
    assert len(single_losses) == len(double_losses) == 6
    assert double_losses == pytest.approx(single_losses, abs=2e-3)
