"""Import layering: the op and the module are plain PyTorch (no fairseq import, issue 12), while
importing any fairseq-facing part of the plugin still registers all of it.

Each check runs in a fresh interpreter: this test process has long imported fairseq."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

NO_FAIRSEQ = """
import sys
{statement}
loaded = sorted(m for m in sys.modules if m == "fairseq" or m.startswith(("fairseq.", "fairseq_cli")))
assert not loaded, "importing it loaded {{}}".format(loaded[:5])
"""

REGISTERED = """
from fairseq.criterions import CRITERION_REGISTRY
from fairseq.data.encoders import BPE_REGISTRY
from fairseq.models import ARCH_MODEL_REGISTRY, MODEL_REGISTRY
from fairseq.optim import OPTIMIZER_REGISTRY
from fairseq.optim.lr_scheduler import LR_SCHEDULER_REGISTRY
from fairseq.tasks import TASK_REGISTRY
missing = [name for name, registry in [
    ("srupp_language_modeling", TASK_REGISTRY), ("srupp_lm", MODEL_REGISTRY), ("srupp_lm_tiny", ARCH_MODEL_REGISTRY),
    ("srupp_adaptive_loss", CRITERION_REGISTRY), ("radam", OPTIMIZER_REGISTRY),
    ("srupp_cosine", LR_SCHEDULER_REGISTRY), ("srupp_bytes", BPE_REGISTRY)] if name not in registry]
assert not missing, "not registered: {}".format(missing)
"""


def run_python(code):
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_op_and_module_do_not_import_fairseq():
    run_python(NO_FAIRSEQ.format(statement="import fairseq_srupp.ops.recurrence\n"
                                 "from fairseq_srupp.modules import SRUpp\n"
                                 "SRUpp(8, 8, 4, layer_norm=True)"))


@pytest.mark.parametrize("statement", [
    # the module first (no registration yet), then one fairseq-facing submodule: registers everything
    "from fairseq_srupp.modules import SRUpp\nimport fairseq_srupp.models.srupp_lm",
    # fairseq first, then the package (what --user-dir does)
    "import fairseq\nimport fairseq_srupp",
    # the op first, fairseq later (a script, or a CLI's main() in the same process): the import hook
    # registers once fairseq has loaded, since --user-dir skips a package already imported
    "import fairseq_srupp.ops.recurrence\nimport fairseq.models",
], ids=["module-then-model", "fairseq-then-package", "op-then-fairseq"])
def test_fairseq_facing_imports_register_everything(statement):
    run_python(statement + "\n" + REGISTERED)


def test_the_plugin_does_not_load_torch_dynamo():
    """torch.nn.attention.bias (the causal structure) loads torch._dynamo, 0.7 s of every command's start:
    the plugin imports it only where a structure is made, which the CPU path never does."""
    run_python("import fairseq\nimport fairseq_srupp\nimport sys\n"
               "from fairseq_srupp.modules import attention_masks\n"
               "assert attention_masks.training_causal_mask(4, 2).shape == (4, 6)\n"
               "assert not attention_masks.is_structured(None)\n"
               "loaded = [m for m in ('torch._dynamo', attention_masks.BIAS_MODULE) if m in sys.modules]\n"
               "assert not loaded, loaded")
