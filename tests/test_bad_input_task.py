"""Bad input to srupp_language_modeling and srupp_lm, tried as a user would: one ``error:`` line on
stderr (no traceback), existing files untouched; or a warning where the input is allowed."""
import os
import re
import shutil
import tempfile

import pytest
import torch
import fork_server
from cli_utils import BIN, STATEFUL_TRAIN_ARGS, USER_DIR, make_char_data, run_tool

from fairseq_srupp.errors import SRUppUserError
from fairseq_srupp.models.srupp_lm import SRUppLanguageModel
from fairseq_srupp.tasks.split_files import check_binarized_split

LOG_RECORD = re.compile(r"^(DEBUG|INFO|WARNING):[\w.]+:|^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \| (DEBUG|INFO|WARNING) \| ")
TRAIN = [*STATEFUL_TRAIN_ARGS, "--batch-size", 4, "--max-update", 1, "--no-save"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Data, and a one-update checkpoint trained with --proj-size > --hidden-size and the
    deprecated --eval-unroll-size (their warnings are checked below)."""
    root = tmp_path_factory.mktemp("bad_input")
    data_bin = make_char_data(root, n_train=6000, n_valid=1500)
    log = run_tool("fairseq-train", data_bin, *STATEFUL_TRAIN_ARGS, "--batch-size", 4, "--max-update", 1,
                   "--proj-size", 64, "--eval-unroll-size", 16, "--batch-size-valid", 2, "--save-dir", root / "ckpt")
    return data_bin, root / "ckpt" / "checkpoint_last.pt", log


def fails(tool, *args):
    """Run a console script that must fail: return its single stderr line (warnings silenced)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    with tempfile.TemporaryDirectory() as cwd:  # fairseq-train makes its default --save-dir even with --no-save
        proc = fork_server.run([BIN / tool, *args], cwd=cwd, env=env, stderr_apart=True, timeout=600)
    # fairseq-eval-lm logs to stderr: set its log records aside, the rest must be the one error line
    lines = [line for line in proc.stderr.strip().splitlines() if not LOG_RECORD.match(line)]
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    print(lines[0])
    return lines[0]


def snapshot(directory):
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def broken_copy(data_bin, tmp_path, name, edit):
    bad = tmp_path / "bad-bin"
    shutil.copytree(data_bin, bad)
    edit(bad / name)
    return bad


def truncate(path, n=10):
    data = path.read_bytes()
    path.write_bytes(data[:-n])


def test_truncated_bin_names_the_file_and_keeps_everything(trained, tmp_path):
    data_bin, _, _ = trained
    bad = broken_copy(data_bin, tmp_path, "train.bin", truncate)
    before = snapshot(bad)
    line = fails("fairseq-train", bad, *TRAIN)
    assert line.startswith("error: {} is truncated or corrupted (".format(bad / "train.bin"))
    assert "re-run fairseq-preprocess" in line
    assert snapshot(bad) == before


def test_corrupted_idx_through_eval_lm(trained, tmp_path):
    data_bin, checkpoint, _ = trained
    bad = broken_copy(data_bin, tmp_path, "valid.idx", lambda p: p.write_bytes(b"\x00" * 64))
    line = fails("fairseq-eval-lm", bad, "--user-dir", USER_DIR, "--task", "srupp_language_modeling", "--path",
                 checkpoint, "--cpu", "--gen-subset", "valid", "--batch-size", 2, "--num-workers", 0)
    assert line == "error: {} is truncated or corrupted (no fairseq mmap index header): re-run fairseq-preprocess " \
                   "for this split".format(bad / "valid.idx")


def test_truncated_idx_and_other_index_damage(trained, tmp_path):
    """In process (the command-line path is the same check as above)."""
    data_bin, _, _ = trained
    bad = broken_copy(data_bin, tmp_path, "train.idx", truncate)
    with pytest.raises(SRUppUserError, match=re.escape("{} is truncated or corrupted (".format(bad / "train.idx"))):
        check_binarized_split(str(bad / "train"))
    shutil.copy(data_bin / "train.idx", bad / "train.idx")
    check_binarized_split(str(bad / "train"))  # intact again
    data = bytearray((bad / "train.idx").read_bytes())
    data[-8:] = (10 ** 9).to_bytes(8, "little")  # last item's offset
    (bad / "train.idx").write_bytes(bytes(data))
    with pytest.raises(SRUppUserError, match="item sizes and offsets disagree"):
        check_binarized_split(str(bad / "train"))
    (bad / "train.idx").unlink()
    with pytest.raises(SRUppUserError, match=re.escape("{} has no index: {} is missing".format(
            bad / "train.bin", bad / "train.idx"))):
        check_binarized_split(str(bad / "train"))


def test_data_binarized_with_another_dictionary(trained, tmp_path):
    data_bin, _, _ = trained

    def drop_symbols(path):
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:5]))

    bad = broken_copy(data_bin, tmp_path, "dict.txt", drop_symbols)
    line = fails("fairseq-train", bad, *TRAIN)
    assert line.startswith("error: {} holds token ids in [".format(bad / "valid.bin"))  # loaded first
    assert line.endswith("but dict.txt has 9 symbols: the split was binarized with another dictionary or is "
                         "corrupted")  # 4 specials + 5 kept


def test_segment_longer_than_a_stream_is_rejected_before_allocating(trained):
    data_bin, checkpoint, _ = trained
    line = fails("fairseq-train", data_bin, *TRAIN, "--tokens-per-sample", 100000000)
    assert line.startswith("error: --tokens-per-sample 100000000 is longer than each stream of 'train' (")
    assert "lower --tokens-per-sample to at most 1501" in line  # 6004 tokens / 4 streams
    # the validation window is checked when the model is built, not after an epoch of training
    line = fails("fairseq-train", data_bin, *TRAIN, "--eval-window", 5000, "--batch-size-valid", 2)
    assert line == ("error: --eval-window 5000 is longer than each stream of 'valid' (1501 tokens / (1 workers x 2 "
                    "streams) = 751 tokens): lower --eval-window to at most 751 or use fewer streams "
                    "(--batch-size-valid)")
    line = fails("fairseq-eval-lm", data_bin, "--user-dir", USER_DIR, "--task", "srupp_language_modeling", "--path",
                 checkpoint, "--cpu", "--gen-subset", "valid", "--batch-size", 2, "--num-workers", 0,
                 "--eval-unroll-size", 5000)
    assert line.startswith("error: --eval-unroll-size 5000 is longer than each stream of 'valid' (")


def test_too_many_streams_names_the_flag_that_set_them(trained):
    """fairseq-train's validation streams come from --batch-size-valid, fairseq-eval-lm's from --batch-size."""
    from omegaconf import OmegaConf

    from fairseq_srupp.tasks.srupp_language_modeling import SRUppLanguageModelingTask

    data_bin, _, _ = trained
    task = SRUppLanguageModelingTask.setup_task(OmegaConf.create({
        "data": str(data_bin), "tokens_per_sample": 8, "eval_unroll_size": 0, "batch_size": 2,
        "batch_size_valid": 1000}))
    for training, flag, expected in [(False, None, "--batch-size-valid"), (True, None, "--batch-size"),
                                     (False, "--batch-size", "--batch-size")]:
        message = "the split 'valid' has 585 tokens, fewer than the 1000 streams (1 workers x 1000 streams): lower {}"
        with pytest.raises(SRUppUserError, match=re.escape(message.format(expected)) + "$"):
            task.check_segment_fits("valid", 585, 1000, 1, 8, training, flag)
    with pytest.raises(SRUppUserError, match=re.escape("or use fewer streams (--batch-size)")):
        task.check_segment_fits("valid", 585, 2, 1, 500, False, "--batch-size")


def test_proj_size_larger_than_hidden_size_warns(trained):
    _, _, log = trained
    assert "--proj-size 64 is larger than --hidden-size 48: allowed, but off the paper's design" in log


def test_eval_unroll_size_is_a_deprecated_alias_of_eval_window(trained):
    _, checkpoint, log = trained
    assert log.count("--eval-unroll-size is deprecated") == 1
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert state["cfg"]["model"]["eval_window"] == 16 and state["cfg"]["task"]["eval_unroll_size"] == 16


def test_from_pretrained_refuses_other_checkpoints(trained, tmp_path):
    data_bin, checkpoint, _ = trained
    hub = SRUppLanguageModel.from_pretrained(str(checkpoint.parent), "checkpoint_last.pt", str(data_bin))
    assert isinstance(hub.models[0], SRUppLanguageModel)

    other = torch.load(checkpoint, map_location="cpu", weights_only=False)
    other["cfg"]["model"]["_name"] = "transformer_lm"
    torch.save(other, tmp_path / "transformer.pt")
    with pytest.raises(SRUppUserError, match=r"holds a 'transformer_lm' model \(TransformerLanguageModel\), not srupp_lm"):
        SRUppLanguageModel.from_pretrained(str(tmp_path), "transformer.pt", str(data_bin))

    torch.save({"embedding_layer.weight": torch.zeros(3, 2)}, tmp_path / "paper.pt")
    with pytest.raises(SRUppUserError, match=r"is not a fairseq checkpoint .*python -m fairseq_srupp.convert"):
        SRUppLanguageModel.from_pretrained(str(tmp_path), "paper.pt", str(data_bin))

    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(SRUppUserError, match=r"notes.pt is not a PyTorch checkpoint"):
        SRUppLanguageModel.from_pretrained(str(tmp_path), "notes.pt", str(data_bin))
