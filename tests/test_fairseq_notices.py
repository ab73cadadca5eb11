"""The Hydra and PyTorch notices fairseq triggers are silenced, so a mistake's `error:` line is all the user reads."""
import os
import subprocess
import warnings

from cli_utils import BIN, USER_DIR, make_char_data

from fairseq_srupp.fairseq_notices import silence_fairseq_notices

# As Hydra 1.3 words them when fairseq 0.12 starts (some start with a newline).
NOTICES = [
    "hydra.experimental.initialize() is no longer experimental. Use hydra.initialize()",
    "\nThe version_base parameter is not specified.\nPlease specify a compatability version level, or None.",
    "In 'config': Usage of deprecated keyword in package header '# @package _group_'.\nSee https://hydra.cc/",
    "\n'config' is validated against ConfigStore schema with the same name.\nThis behavior is deprecated",
    "\nThe strict flag in the compose API is deprecated.\nSee https://hydra.cc/docs/1.2/upgrades/",
]

# As PyTorch 2.13 words them, with the module fairseq 0.12 calls from.
TORCH_NOTICES = [
    ("`torch.cuda.amp.autocast(args...)` is deprecated. Please use `torch.amp.autocast('cuda', args...)` instead.",
     FutureWarning, "fairseq.tasks.fairseq_task"),
    ("`torch.cuda.amp.GradScaler(args...)` is deprecated. Please use `torch.amp.GradScaler('cuda', args...)` instead.",
     FutureWarning, "fairseq.optim.amp_optimizer"),
    ("'pin_memory' argument is set as true but no accelerator is found, then device pinned memory won't be used.",
     UserWarning, "torch.utils.data.dataloader"),
]


def test_only_fairseqs_notices_are_silenced(monkeypatch):
    monkeypatch.delenv("FAIRSEQ_SRUPP_DEBUG", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_fairseq_notices()
        for notice in NOTICES:
            warnings.warn(notice, UserWarning)
        for message, category, module in TORCH_NOTICES:
            warnings.warn_explicit(message, category, "x.py", 1, module=module)
        warnings.warn("Running SRU on CPU with grad_enabled=True. Are you sure?", UserWarning)
        # PyTorch's deprecations are silenced where fairseq calls, not where a user's program does.
        warnings.warn_explicit(TORCH_NOTICES[0][0], FutureWarning, "x.py", 1, module="my_training_script")
    assert [str(w.message) for w in caught] == ["Running SRU on CPU with grad_enabled=True. Are you sure?",
                                                TORCH_NOTICES[0][0]]

    monkeypatch.setenv("FAIRSEQ_SRUPP_DEBUG", "1")  # debugging keeps them
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_fairseq_notices()
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
