"""``make demo`` end to end at a tiny size: it trains exactly the planned updates, shows the time
left while training, evaluates and samples with one window, and says so on its results screen."""
import os
import re
import sys

import fork_server
from cli_utils import synthetic_text


def test_demo_trains_the_planned_updates_and_uses_one_window(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(synthetic_text(12000))
    cmd = [sys.executable, "-m", "fairseq_srupp.demo", "--data", corpus, "--out", tmp_path / "out",
           "--max-update", 30, "--log-interval", 10, "--tokens-per-sample", 32, "--eval-window", 48,
           "--batch-size", 4, "--sample-bytes", 40]
    proc = fork_server.run(cmd, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    out = proc.stdout
    assert proc.returncode == 0, out[-5000:]
    assert re.findall(r"demo: (\d+) of 30 updates, about [0-9.]+ min left", out) == ["20", "30"]
    assert "updates          30 of 30 planned" in out
    assert re.search(r"valid BPC +[0-9.]+ bits per byte \(window 48\)", out)
    assert "top-10 sampling, window 48," in out
    sample = out.split("-" * 60)[1].strip("\n")
    assert sample.startswith("The ") and len(sample.encode()) == len("The ") + 40
    log = (tmp_path / "out/checkpoints/train.log").read_text().splitlines()
    progress = [line for line in log if "loss=" in line]
    assert len(progress) == 3 == len(set(progress))  # every line once
