"""Exact resume through fairseq-train: stopping after N updates and resuming gives the losses of an
uninterrupted run (to 1e-6), with 1 process and with 2 gloo ranks, across an epoch boundary; a
checkpoint without carried state resumes from zero state with one warning line."""
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_utils import STATEFUL_TRAIN_ARGS, make_char_data, run_distributed_train, run_tool
from fairseq.data.indexed_dataset import MMapIndexedDataset

from fairseq_srupp.tasks.carried_state import carried_state_bytes

TRAIN = str(Path(__file__).with_name("full_precision_train.py"))
UPDATE_LOSS = re.compile(r"\| train_inner \|.* loss=([0-9.e+-]+),.* num_updates=(\d+),")
STREAMS, SEGMENT, LAYERS, HIDDEN = 4, 32, 2, 48  # STATEFUL_TRAIN_ARGS: 2 layers, d 48, segments of 32
SAVE = ["--save-interval-updates", 10, "--keep-interval-updates", 1]  # saves every 10 updates, keeps one


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    data_bin = make_char_data(root, n_train=3000, n_valid=1000)
    split = MMapIndexedDataset(str(data_bin / "train"))  # held: its sizes are a view of its mmap
    n_tokens = int(np.sum(split.sizes))
    per_epoch = math.ceil(math.ceil(n_tokens / STREAMS) / SEGMENT)
    stop = per_epoch - 4  # mid-epoch; the 12 resumed updates cross into epoch 2
    assert stop == 20, "the test's checkpoint names assume 24 segments per epoch"
    return data_bin, stop, stop + 12


def losses(log):
    return {int(u): float(v) for v, u in UPDATE_LOSS.findall(log)}


def train(data_bin, save_dir, max_update, world_size=1, *extra):
    args = [data_bin, *STATEFUL_TRAIN_ARGS, "--batch-size", STREAMS // world_size, "--batch-size-valid",
            2 // world_size, "--eval-window", 16, "--save-dir", save_dir, "--max-update", max_update, *extra]
    if world_size == 1:
        return run_tool(TRAIN, *args)
    return run_distributed_train(world_size, *args, program=TRAIN)


def side_files(save_dir):
    return sorted(p.name for p in Path(save_dir).iterdir() if ".carried-rank" in p.name)


def assert_same_losses(uninterrupted, resumed, updates):
    print("uninterrupted:", [uninterrupted.get(u) for u in updates], "\nresumed:      ", [resumed.get(u) for u in updates])
    assert sorted(resumed) == list(updates)
    for u in updates:
        assert resumed[u] == pytest.approx(uninterrupted[u], abs=1e-6), "update {}".format(u)


@pytest.mark.parametrize("world_size", [1, 2])
def test_resume_continues_exactly(setup, tmp_path, world_size):
    data_bin, stop, end = setup
    uninterrupted = losses(train(data_bin, tmp_path / "plain", end, world_size, "--no-save"))
    ckpt = tmp_path / "ckpt"
    first = losses(train(data_bin, ckpt, stop, world_size, *SAVE))
    assert_same_losses(uninterrupted, first, range(1, stop + 1))
    # one side file per checkpoint and rank; checkpoint_1_10.pt was removed at update 20, its side files with it
    checkpoints = sorted(p.name for p in ckpt.glob("*.pt"))
    assert checkpoints == ["checkpoint_1_20.pt", "checkpoint_best.pt", "checkpoint_last.pt"]
    assert side_files(ckpt) == sorted("{}.carried-rank{}".format(c, r) for c in checkpoints for r in range(world_size))
    saved = torch.load(ckpt / "checkpoint_last.pt.carried-rank0", weights_only=False)
    assert (saved["num_updates"], saved["iterations_in_epoch"], saved["world_size"], saved["streams"]) == (
        stop, stop, world_size, STREAMS // world_size)
    if world_size == 1:
        state = saved["state"]["train"]
        nbytes = sum(t.numel() * t.element_size() for t in [state["c"], *state["memory"]])
        assert state["memory_pad"] is None and nbytes == carried_state_bytes(LAYERS, STREAMS, HIDDEN, SEGMENT)
        check_missing_side_file(data_bin, ckpt, tmp_path / "old", uninterrupted, stop)

    log = train(data_bin, ckpt, end, world_size, *SAVE)
    assert "restored carried state from" in log
    assert_same_losses(uninterrupted, losses(log), range(stop + 1, end + 1))


def check_missing_side_file(data_bin, ckpt, old, uninterrupted, stop):
    """A checkpoint without side files (an older version's) resumes from zero state, warning once."""
    shutil.copytree(ckpt, old)
    for name in side_files(old):
        (old / name).unlink()
    log = train(data_bin, old, stop + 1)
    warnings = [line for line in log.splitlines() if "no carried state saved with" in line]
    assert len(warnings) == 1 and "checkpoint_last.pt" in warnings[0], log[-3000:]
    resumed = losses(log)[stop + 1]
    print("update {}: carried state {} | zero state {}".format(stop + 1, uninterrupted[stop + 1], resumed))
    assert abs(resumed - uninterrupted[stop + 1]) > 5e-4, "the side file made no difference"


def test_a_side_file_of_another_update_is_ignored_with_a_warning(tmp_path, caplog):
    """A save interrupted between the checkpoint and the side file leaves an older side file."""
    from types import SimpleNamespace

    from fairseq_srupp.tasks import resume
    from fairseq_srupp.tasks.carried_state import CarriedState, CarriedStateStore

    store = CarriedStateStore()
    store.put("train", CarriedState(torch.ones(2, 3, 4), [torch.ones(5, 3, 4)] * 2, None))
    model = torch.nn.Linear(1, 1)
    model.decoder = SimpleNamespace(carried=store)
    trainer = SimpleNamespace(model=model, data_parallel_rank=0, data_parallel_world_size=1, get_num_updates=lambda: 7,
                              task=SimpleNamespace(cfg=SimpleNamespace(train_subset="train", batch_size=3)))
    epoch_itr = type("Itr", (), {"epoch": 1, "iterations_in_epoch": 7, "__len__": lambda self: 24})()
    checkpoint = str(tmp_path / "checkpoint_last.pt")
    resume.save_side_files(SimpleNamespace(save_dir=str(tmp_path)), trainer, epoch_itr, ["checkpoint_last.pt"], [])
    store.reset()
    resume.load_side_file(checkpoint, trainer, epoch_itr)
    assert torch.equal(store.get("train").memory[1], torch.ones(5, 3, 4))  # the matching file is restored

    store.reset()
    trainer.get_num_updates = lambda: 8  # the checkpoint is one update newer than its side file
    epoch_itr.iterations_in_epoch = 8
    with caplog.at_level("WARNING"):
        resume.load_side_file(checkpoint, trainer, epoch_itr)
    assert len(store) == 0
    assert "does not belong to" in caplog.text and "starts from zero state" in caplog.text

    (tmp_path / "checkpoint_last.pt.carried-rank0").write_bytes(b"garbage")
    resume.load_side_file(checkpoint, trainer, epoch_itr)
    assert len(store) == 0 and "is unreadable" in caplog.text
