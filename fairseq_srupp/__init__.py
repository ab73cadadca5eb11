"""fairseq-srupp: SRU++ (Lei 2021) as a fairseq plugin (``--user-dir fairseq_srupp``).

Two layers:

* ``fairseq_srupp.ops`` (the recurrence) and ``fairseq_srupp.modules`` (``SRUpp`` and its parts)
  are plain PyTorch and never import fairseq, so ``from fairseq_srupp.modules import SRUpp``
  costs no more than torch.
* The fairseq-facing subpackages (:data:`FAIRSEQ_FACING`) register the task, model, criterion,
  optimizer, scheduler and BPE. :func:`register` imports all of them. It runs when this package
  is imported while fairseq is already loaded (``--user-dir``, or ``import fairseq`` first), right
  after fairseq loads when this package came first (a one-shot import hook), and each
  fairseq-facing subpackage calls it once imported, so importing any one of them (e.g.
  ``fairseq_srupp.models.srupp_lm``) registers everything, as before.
"""
import importlib
import importlib.abc
import importlib.machinery
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
        from .fairseq_fixes import install as install_fairseq_fixes

        install_fairseq_fixes()  # --log-file lines once; srupp_lm generation with empty forced prefixes
        from .fairseq_notices import silence_fairseq_notices

        silence_fairseq_notices()  # fairseq's ~20 lines of Hydra and PyTorch deprecations would bury `error:` lines
        from .cli_logging import restore_fairseq_cli_logging

        restore_fairseq_cli_logging()  # fairseq-eval-lm & co. log to stdout in fairseq's format again; see there
    finally:
        _registering = False


class _RegisterWhenFairseqLoads(importlib.abc.MetaPathFinder):
    """One-shot import hook: once ``fairseq`` itself has been imported, :func:`register` runs.

    Without it, a process that imported ``fairseq_srupp`` (e.g. for the op) before fairseq would
    never register: fairseq's ``--user-dir`` import skips a package already in ``sys.modules``.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "fairseq":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec  # found some other way: registration is then explicit (register())
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            register()

        spec.loader.exec_module = exec_module
        return spec


if "fairseq" in sys.modules:
    register()
else:
    from .cli_logging import note_root_logger_before_fairseq

    note_root_logger_before_fairseq()  # so register() can tell fairseq's import-time logging set-up from the program's
    sys.meta_path.insert(0, _RegisterWhenFairseqLoads())
