import warnings
from pathlib import Path

import pytest
import torch

# Importing sru compiles its C++ op and warns that CUDA is missing: harmless on CPU.
warnings.filterwarnings("ignore", message=".*CUDA.*")
warnings.filterwarnings("ignore", message="Just-in-time loading.*")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(1234)
    # Tiny test tensors run fastest on one thread, and 2-thread regions stall badly when another
    # process holds the second core.
    torch.set_num_threads(1)
    yield


def max_diff(a, b):
    return (a.detach().double() - b.detach().double()).abs().max().item()


def assert_close(name, a, b, atol):
    """Print the max difference before asserting, so a failure says how far off it was."""
    if a is None or b is None:
        assert a is None and b is None, "{}: one side is None".format(name)
        return
    assert a.shape == b.shape, "{}: shape {} vs {}".format(name, tuple(a.shape), tuple(b.shape))
    diff = max_diff(a, b)
    print("{}: max diff {:.3e}".format(name, diff))
    assert diff <= atol, "{}: max diff {:.3e} > {:.1e}".format(name, diff, atol)


# The longest files (many fairseq subprocesses each) start first, so that with two pytest workers
# (make test: -n 2 --dist loadfile) neither worker is left running one of them alone at the end.
LONGEST_FIRST = (
    "test_stateful_cli.py", "test_resume.py", "test_gpu_kit.py", "test_quality_per_compute.py",
    "test_data_scripts.py", "test_word_level_cli.py", "test_generation_tools.py", "test_bad_input_task.py",
    "test_demo.py", "test_bad_input_data.py", "test_readme_generation.py", "test_sample_cli.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept otherwise


# What fairseq-train (its default --save-dir, even with --no-save) and Hydra make in the current folder. A
# test that runs them must give them a folder of its own, or the repository gains these after `make test`.
REPO = Path(__file__).resolve().parents[1]
LEFT_BEHIND = ("checkpoints", "outputs", "multirun")
_present = pytest.StashKey[set]()  # those already there when the session started


def pytest_sessionstart(session):
    session.config.stash[_present] = {name for name in LEFT_BEHIND if (REPO / name).exists()}


def pytest_sessionfinish(session):
    if hasattr(session.config, "workerinput"):  # an xdist worker: the controller checks once for all
        return
    made = [name for name in LEFT_BEHIND if (REPO / name).exists() and name not in session.config.stash[_present]]
    if made:
        session.config.pluginmanager.get_plugin("terminalreporter").write_line(
            "error: the tests left {} in {} (a fairseq command run without a folder of its own; or did "
            "something else run there meanwhile?)".format(", ".join(made), REPO), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
