"""The fork server runs a command as a fresh Python would: same output, exit status, stdin, working
directory, environment, logging set-up and plugin switches; only the preloaded imports differ."""
import os
import subprocess
import sys

import pytest

import fork_server
from cli_utils import BIN, USER_DIR

pytestmark = pytest.mark.skipif(fork_server._gpu_visible(), reason="the tests fork no command where a GPU is visible")
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", FAIRSEQ_SRUPP_TEST_FORK="1")


def forked_and_fresh(cmd, **kwargs):
    assert fork_server._parse(cmd) is not None, "not a command the server forks"
    forked = fork_server.run(cmd, env=ENV, **kwargs)
    fresh = fork_server.run(cmd, env=dict(ENV, FAIRSEQ_SRUPP_TEST_FORK="0"), **kwargs)
    print("forked:", forked, "\nfresh:", fresh)
    return forked, fresh


def test_the_server_has_imported_fairseqs_dependencies_and_not_fairseq():
    code = "import sys; print(sorted(m for m in ('torch', 'sklearn', 'fairseq', 'fairseq_srupp') if m in sys.modules))"
    forked, fresh = forked_and_fresh([sys.executable, "-c", code])
    assert forked.stdout.strip() == "['sklearn', 'torch']"  # so the other tests really fork
    assert fresh.stdout.strip() == "[]"


def test_console_script_output_and_exit_status_match():
    forked, fresh = forked_and_fresh([BIN / "fairseq-train", "--help"])
    assert forked.returncode == fresh.returncode == 0
    assert forked.stdout == fresh.stdout and "--user-dir" in forked.stdout


# Configures logging first, as fairseq's commands do, then imports fairseq (which calls basicConfig as it
# imports) and reports the root logger; then the same for a program that imports fairseq first.
LOGGING_FIRST = """
import logging, sys
logging.basicConfig(format="%(levelname)s | %(name)s | %(message)s", level="INFO", stream=sys.stdout)
import fairseq
logging.getLogger("fairseq.probe").info("hello")
print(logging.getLogger().level, [type(h).__name__ for h in logging.getLogger().handlers])
"""
FAIRSEQ_FIRST = """
import logging, fairseq
print(logging.getLogger().level, [getattr(h, "stream", None) is not None for h in logging.getLogger().handlers])
"""


@pytest.mark.parametrize("code", [LOGGING_FIRST, FAIRSEQ_FIRST], ids=["logging-first", "fairseq-first"])
def test_logging_is_set_up_in_the_commands_order(code):
    forked, fresh = forked_and_fresh([sys.executable, "-c", code], stderr_apart=True)
    assert forked.stdout == fresh.stdout and forked.returncode == fresh.returncode == 0


def test_failures_argv_stdin_cwd_and_path_match(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text("import os, sys\nprint(sys.argv[1:], os.getcwd(), sys.path[0], __file__, sys.stdin.read())\n"
                      "sys.exit(sys.argv[1])\n")
    forked, fresh = forked_and_fresh([sys.executable, script, "bad news"], cwd=tmp_path, input="from stdin",
                                     stderr_apart=True)
    assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert fresh.returncode == 1 and fresh.stderr == "bad news\n" and "from stdin" in fresh.stdout
    code = "import sys; print(sys.argv); raise ValueError('boom')"
    forked, fresh = forked_and_fresh([sys.executable, "-c", code, "x"], stderr_apart=True)
    assert forked.returncode == fresh.returncode == 1 and forked.stdout == fresh.stdout == "['-c', 'x']\n"
    assert forked.stderr.splitlines()[-1] == fresh.stderr.splitlines()[-1] == "ValueError: boom"


def test_a_plugin_error_is_the_same_one_line(tmp_path):
    """The server never imports the plugin: fairseq-train imports it from --user-dir in the command."""
    cmd = [BIN / "fairseq-train", tmp_path / "missing", "--user-dir", USER_DIR, "--task", "srupp_language_modeling",
           "--arch", "srupp_lm_tiny", "--cpu", "--batch-size", 2]
    # In tmp_path: fairseq makes its default --save-dir (checkpoints/) in the current folder before the error.
    forked, fresh = forked_and_fresh(cmd, stderr_apart=True, cwd=tmp_path)
    assert forked.returncode == fresh.returncode == 1
    assert forked.stderr == fresh.stderr and forked.stderr.startswith("error: ") and forked.stderr.count("\n") == 1


def test_start_up_variables_get_a_server_of_their_own():
    cmd = [sys.executable, "-c", "print(hash('srupp'))"]
    seeded = [fork_server.run(cmd, env=dict(ENV, PYTHONHASHSEED=seed)).stdout for seed in ("1", "2", "1")]
    fresh = fork_server.run(cmd, env=dict(ENV, PYTHONHASHSEED="1", FAIRSEQ_SRUPP_TEST_FORK="0")).stdout
    assert seeded[0] == seeded[2] == fresh != seeded[1]


def test_a_command_past_its_timeout_is_killed():
    with pytest.raises(subprocess.TimeoutExpired):
        fork_server.run([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
                        env=ENV, timeout=1)
