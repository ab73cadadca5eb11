"""fairseq-preprocess → fairseq-train → fairseq-eval-lm with srupp_lm, in subprocesses."""
import os
import re

import pytest
import fork_server
from cli_utils import BIN, EVAL_LOSS, TINY_TRAIN_ARGS, TRAIN_LOSS, USER_DIR, VALID_LOSS, make_char_data, run_tool

# Warnings as a user sees them (no PYTHONWARNINGS), one thread.
QUIET_ENV = dict({k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "FAIRSEQ_SRUPP_DEBUG")},
                 OMP_NUM_THREADS="1")
LOG_LINE = r"^\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d \| INFO \| fairseq_cli\.{} \| "


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data_bin = make_char_data(root)
    log = run_tool("fairseq-train", data_bin, *TINY_TRAIN_ARGS, "--max-update", 40, "--save-dir", root / "ckpt")
    return root, data_bin, log


def test_training_loss_goes_down_and_checkpoints_are_saved(trained):
    root, _, log = trained
    losses = [float(v) for v in TRAIN_LOSS.findall(log)]
    print("train losses", losses)
    assert len(losses) >= 6
    assert losses[-1] < losses[0] - 1.0  # from ~log2(V) toward the grammar's entropy
    assert (root / "ckpt" / "checkpoint_last.pt").exists()
    assert (root / "ckpt" / "checkpoint_best.pt").exists()


def bits_per_token_in_process(checkpoint, data_bin, split):
    """Score every sample of the split one by one, independently of fairseq's scorers."""
    import math

    import torch
    from fairseq import checkpoint_utils

    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(checkpoint)], arg_overrides={"data": str(data_bin), "tokens_per_sample": 64}
    )
    model = models[0].eval()
    task.load_dataset(split)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(task.dataset(split))):
            item = task.dataset(split)[i]
            lprobs = model.get_normalized_probs(model(item["source"][None]), log_probs=True)[0]
            total -= lprobs.gather(-1, item["target"][:, None]).sum().item()
            count += item["target"].numel()
    return total / count / math.log(2), count


def test_eval_lm_scores_every_token_like_an_independent_loop(trained):
    root, data_bin, log = trained
    checkpoint = root / "ckpt" / "checkpoint_last.pt"
    proc = fork_server.run([BIN / "fairseq-eval-lm", data_bin, "--user-dir", USER_DIR, "--path", checkpoint,
                            "--cpu", "--tokens-per-sample", 64, "--batch-size", 8, "--gen-subset", "valid",
                            "--num-workers", 0], env=QUIET_ENV, stderr_apart=True)
    out = proc.stdout
    # As fairseq's eval-lm sets it up: its log lines on stdout (`fairseq-eval-lm ... | grep Loss` works),
    # nothing on stderr (no bare-format records, Hydra DEBUG lines or PyTorch's pin_memory notice).
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-3000:]
    assert re.search(LOG_LINE.format("eval_lm") + r"Loss \(base 2\): ", out, re.M), out[-3000:]
    eval_loss = float(EVAL_LOSS.findall(out)[-1])
    expected, count = bits_per_token_in_process(checkpoint, data_bin, "valid")
    valid_loss = float(VALID_LOSS.findall(log)[-1])
    print("fairseq-eval-lm {} | in-process {} over {} tokens | fairseq-train valid {}".format(
        eval_loss, expected, count, valid_loss))
    assert "Evaluated {:,} tokens".format(count) in out
    assert eval_loss == pytest.approx(expected, abs=1e-3)
    # fairseq's own validation drops the last partial batch, so it only agrees roughly.
    assert eval_loss == pytest.approx(valid_loss, abs=0.05)
    assert eval_loss < 3.0  # well below the uniform 5 bits of the ~30-symbol alphabet


def test_eval_lm_rejects_a_mismatched_dictionary(trained, tmp_path):
    root, data_bin, _ = trained
    other = tmp_path / "other"
    other.mkdir()
    (other / "dict.txt").write_text("".join("{} 1\n".format(b) for b in range(100, 160)))
    for split in ("valid.bin", "valid.idx"):
        (other / split).write_bytes((data_bin / split).read_bytes())
    proc = fork_server.run([BIN / "fairseq-eval-lm", other, "--user-dir", USER_DIR, "--path",
                            root / "ckpt" / "checkpoint_last.pt", "--cpu", "--tokens-per-sample", 64, "--gen-subset", "valid"])
    assert proc.returncode != 0
    assert "trained with a dictionary of" in proc.stdout


def test_bf16_trains_without_torch_xla(tmp_path):
    """fairseq turns --bf16 into --tpu; without torch_xla the plugin clears it, so bf16 training runs
    (here on the CPU: bf16 weights, the fused CPU recurrence in fp32 inside) and learns."""
    data_bin = make_char_data(tmp_path, n_train=20000, n_valid=2000)
    log = run_tool("fairseq-train", data_bin, *TINY_TRAIN_ARGS, "--bf16", "--max-update", 20, "--no-save")
    assert "xla" not in log.lower()
    losses = [float(v) for v in TRAIN_LOSS.findall(log)]
    print("bf16 train losses", losses)
    assert len(losses) >= 4 and all(v == v for v in losses)  # finite (NaN != NaN)
    assert losses[-1] < losses[0] - 0.5


def test_preprocess_interactive_and_generate_log_where_fairseq_sends_it(trained, tmp_path):
    """fairseq-fixed's import configures the root logger first (DEBUG, bare format, stderr), which pre-empted
    these commands' own set-up; with the plugin loaded they log as fairseq does: fairseq's format on stdout,
    fairseq-generate's into its --results-path file, and nothing else on stderr."""
    root, data_bin, _ = trained
    (tmp_path / "train.txt").write_text("104 105\n")
    preprocess = fork_server.run([BIN / "fairseq-preprocess", "--user-dir", USER_DIR, "--only-source", "--trainpref",
                                  tmp_path / "train.txt", "--destdir", tmp_path / "bin", "--workers", 1],
                                 env=QUIET_ENV, stderr_apart=True)
    interactive = fork_server.run([BIN / "fairseq-interactive", data_bin, "--user-dir", USER_DIR, "--path",
                                   root / "ckpt" / "checkpoint_last.pt", "--task", "language_modeling", "--cpu",
                                   "--max-len-b", 8], env=QUIET_ENV, stderr_apart=True, input="116 104 101\n")
    generate = fork_server.run([BIN / "fairseq-generate", data_bin, "--user-dir", USER_DIR, "--path",
                                root / "ckpt" / "checkpoint_last.pt", "--task", "language_modeling", "--cpu",
                                "--gen-subset", "valid", "--max-sentences", 4, "--max-len-b", 4, "--prefix-size", 2,
                                "--results-path", tmp_path / "gen"], env=QUIET_ENV, stderr_apart=True)
    for name, proc in (("preprocess", preprocess), ("interactive", interactive), ("generate", generate)):
        print(name, proc.returncode, "\nstdout:", proc.stdout[-2000:], "\nstderr:", proc.stderr[-2000:])
        assert proc.returncode == 0 and proc.stderr == "", name
    assert re.search(LOG_LINE.format("preprocess") + "Wrote preprocessed data", preprocess.stdout, re.M)
    assert re.search(LOG_LINE.format("interactive") + "Total time", interactive.stdout, re.M)
    assert re.search(r"^H-0\t", interactive.stdout, re.M)
    results = (tmp_path / "gen" / "generate-valid.txt").read_text()
    assert generate.stdout == "" and re.search(LOG_LINE.format("generate") + "NOTE: hypothesis", results, re.M)
    assert re.search(r"^H-0\t", results, re.M)
