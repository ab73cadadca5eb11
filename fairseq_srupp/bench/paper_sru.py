"""Import ``sru`` (``sru==3.0.0.dev6``, the paper's implementation: the benchmarks' reference) so that
its CUDA kernel builds with current PyTorch.

sru compiles its kernel with ``torch.utils.cpp_extension.load`` when it is imported and, when that fails,
warns and registers a dummy op. Its source dispatches on ``U.type()``, which torch 2.11's dispatch macros
no longer accept (``no suitable conversion function from "const at::DeprecatedTypeProperties" to
"c10::ScalarType"``), so on the GPU kit's machine every comparison with sru's kernel would be lost.
:func:`import_sru` has nvcc force-include ``sru_torch_compat.h`` (through ``NVCC_PREPEND_FLAGS``, read
by nvcc itself) for the duration of the import; sru's files are used as installed.
"""
import contextlib
import functools
import os
import warnings
from pathlib import Path

COMPAT_HEADER = Path(__file__).resolve().with_name("sru_torch_compat.h")
BUILD_FAILED = "Just-in-time loading and compiling the CUDA kernels of SRU was unsuccessful"


@contextlib.contextmanager
def _nvcc_prepend(flag: str):
    before = os.environ.get("NVCC_PREPEND_FLAGS")
    os.environ["NVCC_PREPEND_FLAGS"] = flag if not before else "{} {}".format(flag, before)
    try:
        yield
    finally:
        if before is None:
            del os.environ["NVCC_PREPEND_FLAGS"]
        else:
            os.environ["NVCC_PREPEND_FLAGS"] = before


@functools.lru_cache(maxsize=None)  # sru warns once per process: the first answer is the answer
def import_sru():
    """``(sru, None)``, or ``(sru, why)`` when its CUDA kernel did not build (sru then runs its CPU path
    and a dummy CUDA op: nothing on a GPU may be timed with it). Its warnings are kept from the caller;
    ``ImportError`` when sru is not installed."""
    with _nvcc_prepend("-include {}".format(COMPAT_HEADER)), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import sru
    failed = [str(w.message) for w in caught if BUILD_FAILED in str(w.message)]
    return sru, (failed[0].strip().splitlines()[-1][:300] if failed else None)
