"""Give fairseq's evaluation and generation commands, and programs, back the logging they set up themselves.

fairseq-fixed 0.12.3.1 (the fairseq this project installs on Python 3.11+) imports
``fairseq/models/wav2vec/wav2vec2_classification.py`` with ``import fairseq``, and that module calls
``logging.basicConfig(level=logging.DEBUG)``. ``fairseq-eval-lm``, ``-interactive``, ``-preprocess``
and ``-validate`` configure logging only after they import fairseq, so their own ``basicConfig``
(fairseq's ``time | level | name | message`` lines on stdout, at ``$LOGLEVEL``) does nothing:
their logs went to stderr in Python's bare format, with Hydra's DEBUG lines among them, and
``fairseq-eval-lm ... | grep Loss`` found nothing. ``fairseq-generate`` configures logging when its
``_main`` starts (onto ``--results-path`` when given), and that was pre-empted the same way.
(``fairseq-train`` configures logging before it imports fairseq and is unaffected.)

:func:`restore_fairseq_cli_logging` runs when the plugin loads (``--user-dir``), which those
commands do while parsing their arguments, before they log anything of their own. It acts only
where the root logger still holds nothing but that import's handler and one of those commands is
running, or where a Python program imported the plugin before fairseq with its root logger not yet
configured (then the handler can only be fairseq's: it is removed, so the program's logging is as it
would be with official fairseq, and a ``basicConfig`` of its own takes effect). Anywhere else (a program
that set up its own logging, official fairseq) it changes nothing.
"""
import logging
import sys
from typing import List, Optional, Tuple

from fairseq_srupp.cli_modules import fairseq_cli_module

# The fairseq_cli modules that call basicConfig as they are imported, after importing fairseq.
CONFIGURED_AT_IMPORT = ("eval_lm", "interactive", "preprocess", "validate", "hydra_validate")
# The one that calls it when its _main starts, with --results-path's file (or stdout) as its stream.
CONFIGURED_IN_MAIN = ("generate",)
PREEMPTING_MODULE = "fairseq.models.wav2vec.wav2vec2_classification"

# The root logger's handlers and level when the plugin was imported before fairseq (None: fairseq came first).
_root_before_fairseq: Optional[Tuple[List[logging.Handler], int]] = None


def note_root_logger_before_fairseq() -> None:
    """Remember the program's root logger, before fairseq's import can configure it."""
    global _root_before_fairseq
    root = logging.getLogger()
    _root_before_fairseq = (list(root.handlers), root.level)


def _preempted_by_fairseq_import(root: logging.Logger) -> bool:
    """True when the root logger is exactly what ``basicConfig(level=DEBUG)`` made at fairseq's import."""
    if PREEMPTING_MODULE not in sys.modules or root.level != logging.DEBUG or len(root.handlers) != 1:
        return False
    handler = root.handlers[0]
    return (type(handler) is logging.StreamHandler and handler.stream is sys.stderr
            and handler.formatter is not None and handler.formatter._fmt == logging.BASIC_FORMAT)


def _running(names) -> bool:
    return any(fairseq_cli_module(name) is not None for name in names)


def restore_fairseq_cli_logging() -> None:
    """Undo fairseq-fixed's import-time ``basicConfig(DEBUG)`` in the commands and programs it pre-empted."""
    root = logging.getLogger()
    if not _preempted_by_fairseq_import(root):
        return
    if _root_before_fairseq is not None and not _root_before_fairseq[0]:
        # The program had configured nothing before fairseq came: the handler is fairseq's import's.
        root.removeHandler(root.handlers[0])
        root.setLevel(_root_before_fairseq[1])
    elif _running(CONFIGURED_AT_IMPORT):
        from fairseq.utils import reset_logging

        reset_logging()  # fairseq's own set-up: its format, $LOGLEVEL, stdout, as the command asked
    elif _running(CONFIGURED_IN_MAIN):
        # Left unconfigured, so the command's own basicConfig takes effect when its _main starts.
        root.removeHandler(root.handlers[0])
        root.setLevel(logging.WARNING)
