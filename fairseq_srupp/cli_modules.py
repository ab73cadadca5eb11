"""Which of fairseq's command modules (``fairseq_cli.*``) this process runs or has imported."""
import sys
from types import ModuleType
from typing import Optional


def _main_run_as() -> Optional[str]:
    """The module name ``__main__`` was run under (``python -m X``: X), or None (a script, ``-c``)."""
    return getattr(getattr(sys.modules.get("__main__"), "__spec__", None), "name", None)


def fairseq_cli_module(name: str) -> Optional[ModuleType]:
    """``fairseq_cli.<name>`` as loaded here: imported (by its console script, or by another command), or run
    as ``python -m fairseq_cli.<name>`` (then it is ``__main__``, named by its spec); None if neither."""
    full = "fairseq_cli." + name
    if full in sys.modules:
        return sys.modules[full]
    return sys.modules.get("__main__") if _main_run_as() == full else None


def real_module_name(name: Optional[str]) -> Optional[str]:
    """A function's ``__module__``, with ``__main__`` replaced by the name it was run under (``python -m X``: X)."""
    return (_main_run_as() or name) if name == "__main__" else name
