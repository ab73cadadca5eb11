"""fairseq's Hydra deprecation notices are silenced, so a mistake's `error:` line is all the user reads."""
import os
import subprocess
import warnings

from cli_utils import BIN, USER_DIR, make_char_data

from fairseq_srupp.hydra_warnings import silence_fairseq_hydra_notices

# As Hydra 1.3 words them when fairseq 0.12 starts (some start with a newline).
NOTICES = [
    "hydra.experimental.initialize() is no longer experimental. Use hydra.initialize()",
    "\nThe version_base parameter is not specified.\nPlease specify a compatability version level, or None.",
    "In 'config': Usage of deprecated keyword in package header '# @package _group_'.\nSee https://hydra.cc/",
    "\n'config' is validated against ConfigStore schema with the same name.\nThis behavior is deprecated",
    "\nThe strict flag in the compose API is deprecated.\nSee https://hydra.cc/docs/1.2/upgrades/",
]


def test_only_hydras_notices_are_silenced(monkeypatch):
    monkeypatch.delenv("FAIRSEQ_SRUPP_DEBUG", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_fairseq_hydra_notices()
        for notice in NOTICES:
            warnings.warn(notice, UserWarning)
        warnings.warn("Running SRU on CPU with grad_enabled=True. Are you sure?", UserWarning)
    assert [str(w.message) for w in caught] == ["Running SRU on CPU with grad_enabled=True. Are you sure?"]

    monkeypatch.setenv("FAIRSEQ_SRUPP_DEBUG", "1")  # debugging keeps them
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_fairseq_hydra_notices()
        warnings.warn(NOTICES[0], UserWarning)
    assert len(caught) == 1


def test_a_mistake_prints_its_error_line_alone(tmp_path):
    """A real fairseq-train with default warning settings (no PYTHONWARNINGS): besides fairseq's log
    records, the output is the one error line (there were 22 lines of Hydra notices above it)."""
    data = make_char_data(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "FAIRSEQ_SRUPP_DEBUG")}
    proc = subprocess.run([str(BIN / "fairseq-train"), str(data), "--user-dir", USER_DIR, "--task",
                           "srupp_language_modeling", "--arch", "srupp_lm_tiny", "--cpu", "--num-layers", "0",
                           "--batch-size", "2", "--tokens-per-sample", "32"],
                          cwd=tmp_path, env=dict(env, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)  # in tmp_path: fairseq-train makes its default --save-dir before the error
    lines = [line for line in (proc.stdout + proc.stderr).splitlines()
             if line.strip() and "| INFO |" not in line and not line.startswith(("INFO:", "DEBUG:"))]
    assert proc.returncode != 0 and lines == ["error: --num-layers must be a positive integer, got 0"], lines
