import warnings

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
