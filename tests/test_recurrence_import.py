"""Importing the op must not import fairseq, nor compile anything."""
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fairseq_srupp"

# The package's own __init__ registers fairseq components; a stand-in parent isolates what ops/
# itself pulls in, so this checks the op layer whatever the package-level import does.
PROBE = """
import sys, types
parent = types.ModuleType("fairseq_srupp")
parent.__path__ = [{package!r}]
sys.modules["fairseq_srupp"] = parent
import fairseq_srupp.ops.recurrence as rec
from fairseq_srupp.ops.recurrence import cpu, cuda_host
import torch
assert torch.ops.fairseq_srupp.elementwise_recurrence.default is not None  # registered at import
print(sorted(m for m in sys.modules if m == "fairseq" or m.startswith("fairseq.")))
from fairseq_srupp.ops.dropout import cpu as dropout_cpu
print(cpu._extension is None and not cuda_host._libraries and dropout_cpu._extension is None)
"""


def test_importing_the_op_does_not_import_fairseq_or_compile():
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", "/nonexistent"))
    out = subprocess.run([sys.executable, "-c", PROBE.format(package=str(PACKAGE))], env=env,
                         capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]", "fairseq modules imported by fairseq_srupp.ops: " + out[0]
    assert out[1] == "True", "a build ran at import"
