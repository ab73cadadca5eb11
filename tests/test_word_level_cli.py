"""Word-level srupp_lm (projected adaptive softmax) through fairseq-train / fairseq-eval-lm.

The criterion's loss path (only the target's cluster) and fairseq-eval-lm's path
(``get_normalized_probs`` over the whole vocabulary) must report the same loss.
"""
import pytest
from cli_utils import (ADAPTIVE_ARGS, STATEFUL_TRAIN_ARGS, TRAIN_LOSS, VALID_LOSS, make_word_data,
                       one_and_two_process_losses, run_tool, stateful_eval_lm_loss)


@pytest.fixture(scope="module")
def word_data(tmp_path_factory):
    return make_word_data(tmp_path_factory.mktemp("word_level"))


def test_train_then_eval_lm_agree_on_the_adaptive_softmax_loss(word_data, tmp_path):
    log = run_tool("fairseq-train", word_data, *STATEFUL_TRAIN_ARGS, *ADAPTIVE_ARGS, "--batch-size", 4,
                   "--max-update", 60, "--lr", 0.01, "--eval-unroll-size", 48, "--batch-size-valid", 3, "--log-interval", 5,
                   "--save-dir", tmp_path / "ckpt")
    train_losses = [float(v) for v in TRAIN_LOSS.findall(log)]
    valid_loss = float(VALID_LOSS.findall(log)[-1])
    print("train losses", train_losses, "valid", valid_loss)
    assert train_losses[-1] < train_losses[0] - 1.0  # bits per word
    eval_loss = stateful_eval_lm_loss(word_data, tmp_path / "ckpt" / "checkpoint_last.pt")
    print("validation during training {} | fairseq-eval-lm {}".format(valid_loss, eval_loss))
    assert eval_loss == pytest.approx(valid_loss, abs=6e-4)  # training prints 3 decimals


def test_legacy_ddp_two_processes_match_one_process(word_data):
    common = [word_data, *STATEFUL_TRAIN_ARGS, *ADAPTIVE_ARGS, "--max-update", 6, "--disable-validation", "--no-save"]
    single_losses, double_losses = one_and_two_process_losses(*common)  # same 4 streams
    assert len(single_losses) == len(double_losses) == 6
    assert double_losses == pytest.approx(single_losses, abs=2e-3)
