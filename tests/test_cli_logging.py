"""restore_fairseq_cli_logging acts only on the root logger fairseq-fixed's import left, in the commands it pre-empted.

The commands themselves are run in tests/test_cli.py (their log lines on stdout, nothing on stderr)."""
import logging
import sys
import types

import fairseq  # noqa: F401  (imports wav2vec2_classification, as every fairseq command does)
import fork_server
import pytest

from fairseq_srupp import cli_logging
from fairseq_srupp.cli_logging import (CONFIGURED_AT_IMPORT, CONFIGURED_IN_MAIN, note_root_logger_before_fairseq,
                                       restore_fairseq_cli_logging)

FAIRSEQ_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"


@pytest.fixture
def root(monkeypatch):
    """The root logger; the handlers a test adds (plain StreamHandlers) and its level are undone after."""
    logger = logging.getLogger()
    level = logger.level
    monkeypatch.delenv("LOGLEVEL", raising=False)
    monkeypatch.setattr(cli_logging, "_root_before_fairseq", None)  # as in a command: fairseq came first
    for name in CONFIGURED_AT_IMPORT + CONFIGURED_IN_MAIN:
        monkeypatch.delitem(sys.modules, "fairseq_cli." + name, raising=False)
    yield logger
    logger.handlers[:] = [h for h in logger.handlers if type(h) is not logging.StreamHandler]
    logger.setLevel(level)


def configure(root, **kwargs):
    """``basicConfig`` on a root logger without pytest's capture handlers (kwargs: what fairseq-fixed's import
    passes, level=DEBUG, unless given)."""
    root.handlers.clear()  # pytest's own, for this test's call; pytest removes them itself after
    logging.basicConfig(**{"level": logging.DEBUG, **kwargs})


def running(monkeypatch, name, as_main=False):
    """As the command's console script imports it, or as `python -m fairseq_cli.NAME` runs it (as __main__)."""
    module = types.ModuleType("__main__" if as_main else "fairseq_cli." + name)
    module.__spec__ = types.SimpleNamespace(name="fairseq_cli." + name)
    monkeypatch.setitem(sys.modules, "__main__" if as_main else "fairseq_cli." + name, module)


@pytest.mark.parametrize("command", CONFIGURED_AT_IMPORT)
def test_commands_that_configure_at_import_get_fairseqs_set_up(root, monkeypatch, command):
    configure(root)  # what fairseq-fixed's import does
    running(monkeypatch, command)
    running(monkeypatch, "generate")  # fairseq-interactive imports fairseq_cli.generate too
    restore_fairseq_cli_logging()
    (handler,) = root.handlers
    assert root.level == logging.INFO and handler.stream is sys.stdout
    assert handler.formatter._fmt == FAIRSEQ_FORMAT and handler.formatter.datefmt == "%Y-%m-%d %H:%M:%S"


def test_commands_run_as_modules_are_recognised(root, monkeypatch):
    configure(root)
    running(monkeypatch, "eval_lm", as_main=True)  # python -m fairseq_cli.eval_lm (the demo's way)
    restore_fairseq_cli_logging()
    assert root.level == logging.INFO and [h.stream for h in root.handlers] == [sys.stdout]


def test_loglevel_is_honoured(root, monkeypatch):
    configure(root)
    running(monkeypatch, "eval_lm")
    monkeypatch.setenv("LOGLEVEL", "warning")
    restore_fairseq_cli_logging()
    assert root.level == logging.WARNING


def test_generate_is_left_to_configure_itself_when_its_main_starts(root, monkeypatch, tmp_path):
    configure(root)
    running(monkeypatch, "generate")
    restore_fairseq_cli_logging()
    assert root.handlers == [] and root.level == logging.WARNING
    with open(tmp_path / "results.txt", "w") as results:  # as fairseq-generate's _main does with --results-path
        logging.basicConfig(format=FAIRSEQ_FORMAT, level="INFO", stream=results)
        logging.getLogger("fairseq_cli.generate").info("hello")
        root.handlers[0].flush()
    assert (tmp_path / "results.txt").read_text().endswith(" | INFO | fairseq_cli.generate | hello\n")


def test_anything_else_is_left_alone(root, monkeypatch):
    configure(root)  # no fairseq command running: a user's program, say
    before = root.handlers[:]
    restore_fairseq_cli_logging()
    assert root.handlers == before and root.level == logging.DEBUG

    running(monkeypatch, "eval_lm")
    configure(root, format="%(name)s: %(message)s")  # set up by someone on purpose
    before = root.handlers[:]
    restore_fairseq_cli_logging()
    assert root.handlers == before and root.level == logging.DEBUG


def test_a_program_that_imported_the_plugin_first_gets_its_own_logging_back(root):
    root.handlers.clear()
    note_root_logger_before_fairseq()  # the plugin imported before fairseq, nothing configured yet
    logging.basicConfig(level=logging.DEBUG)  # then fairseq's import
    restore_fairseq_cli_logging()
    assert root.handlers == [] and root.level == logging.WARNING

    configure(root)  # the program configured DEBUG logging itself before importing the plugin and fairseq
    note_root_logger_before_fairseq()
    before = root.handlers[:]
    restore_fairseq_cli_logging()
    assert root.handlers == before and root.level == logging.DEBUG


REPORT = "import logging; root = logging.getLogger(); print(len(root.handlers), root.level)"


@pytest.mark.parametrize("imports,expected", [
    ("import fairseq_srupp, fairseq", "0 30"),  # the plugin first: Python's default (WARNING, no handler)
    ("import fairseq_srupp.models.srupp_lm", "0 30"),  # the hub's way in, which imports fairseq
    ("import fairseq, fairseq_srupp", "1 10"),  # fairseq first: cannot be told from the program's, left alone
], ids=["plugin-first", "model-module", "fairseq-first"])
def test_in_a_python_program(imports, expected):
    proc = fork_server.run([sys.executable, "-c", imports + "; " + REPORT])
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == expected, proc.stdout[-3000:]
