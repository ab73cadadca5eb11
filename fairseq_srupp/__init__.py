"""fairseq-srupp: SRU++ (Lei 2021) as a fairseq plugin (``--user-dir fairseq_srupp``).

Two layers:

* ``fairseq_srupp.ops`` (the recurrence) and ``fairseq_srupp.modules`` (``SRUpp`` and its parts)
  are plain PyTorch and never import fairseq, so ``from fairseq_srupp.modules import SRUpp``
  costs no more than torch.
* The fairseq-facing subpackages (:data:`FAIRSEQ_FACING`) register the task, model, criterion,
  optimizer, scheduler and BPE. :func:`register` imports all of them. It runs when this package
  is imported while fairseq is already loaded (``--user-dir``, or ``import fairseq`` first), and
  each fairseq-facing subpackage calls it once imported, so importing any one of them (e.g.
  ``fairseq_srupp.models.srupp_lm``) registers everything, as before.
"""
import importlib
import sys

from .errors import install_excepthook as _install_excepthook

_install_excepthook()  # SRUppUserError -> one line on the terminal (FAIRSEQ_SRUPP_DEBUG=1: traceback)

__version__ = "0.1.0"

# Imported in this order by register(); each registers its components with fairseq when imported.
FAIRSEQ_FACING = ("criterions", "data", "models", "optim", "tasks")

_registering = False


def register() -> None:
    """Register every fairseq component of the plugin (imports fairseq; idempotent)."""
    global _registering
    if _registering:  # a subpackage imported below calls back in
        return
    _registering = True
    try:
        from .numpy_compat import install as install_numpy_compat

        install_numpy_compat()  # before fairseq builds any dataset
        for name in FAIRSEQ_FACING:
            importlib.import_module("{}.{}".format(__name__, name))
    finally:
        _registering = False


if "fairseq" in sys.modules:
    register()
