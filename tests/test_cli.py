"""fairseq-preprocess → fairseq-train → fairseq-eval-lm with srupp_lm, in subprocesses."""
import pytest
import fork_server
from cli_utils import BIN, EVAL_LOSS, TINY_TRAIN_ARGS, TRAIN_LOSS, USER_DIR, VALID_LOSS, make_char_data, run_tool


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
    out = run_tool("fairseq-eval-lm", data_bin, "--user-dir", USER_DIR, "--path", checkpoint,
                   "--cpu", "--tokens-per-sample", 64, "--batch-size", 8, "--gen-subset", "valid", "--num-workers", 0)
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
