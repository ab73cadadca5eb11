"""Watching a run: ``--tensorboard-logdir`` writes event files, ``--log-file`` holds every line once.

One tiny stateful run of 3 epochs with validation after each: the TensorBoard ``train_inner`` loss
scalars equal the losses fairseq prints, and ``--log-file`` (where fairseq 0.12 adds a handler per
epoch and per validation) has no repeated line.
"""
import struct

from cli_utils import STATEFUL_TRAIN_ARGS, TRAIN_LOSS, make_char_data, run_tool


def event_scalars(logdir):
    """{tag: [(step, value), ...]} read from the TFRecord event files under ``logdir``."""
    from tensorboardX.proto import event_pb2

    scalars = {}
    for path in sorted(logdir.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4  # length, its crc, the record, its crc
            for value in event.summary.value:
                key = "{}/{}".format(path.parent.name, value.tag)
                scalars.setdefault(key, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_events_and_log_file_lines_once(tmp_path):
    data_bin = make_char_data(tmp_path, n_train=3000, n_valid=600)
    log_file, logdir = tmp_path / "train.log", tmp_path / "tb"
    out = run_tool("fairseq-train", data_bin, *STATEFUL_TRAIN_ARGS, "--batch-size", 4, "--max-epoch", 3,
                   "--batch-size-valid", 2, "--save-dir", tmp_path / "ckpt", "--no-save",
                   "--tensorboard-logdir", logdir, "--log-file", log_file)
    assert "tensorboard not found" not in out

    scalars = event_scalars(logdir)
    print(sorted(scalars))
    printed = [float(v) for v in TRAIN_LOSS.findall(out)]
    logged = [value for _, value in sorted(scalars["train_inner/loss"])]
    assert len(logged) == len(printed) > 10
    assert all(abs(a - b) < 5e-3 for a, b in zip(logged, printed))  # fairseq prints 3 decimals
    assert len(scalars["valid/loss"]) == 3 and len(scalars["train/loss"]) == 3  # one per epoch

    lines = log_file.read_text().splitlines()
    train_lines = [line for line in lines if "loss=" in line]  # one per --log-interval (train_inner)
    valid_lines = [line for line in lines if "valid on 'valid' subset" in line]
    print("\n".join(lines[-12:]))
    assert len(train_lines) == len(printed) and len(set(train_lines)) == len(train_lines)
    assert len(valid_lines) == 3
