"""``recurrence_cuda.cu`` compiled for the host, so its entry points run on the CPU (tests only).

The .cu file is built as C++ under ``cuda_host_shim.h`` into a small shared library (g++, a few
seconds, cached like the CPU extension under ``TORCH_EXTENSIONS_DIR``, keyed on the sources);
:func:`launch_host` has CuPy launcher's signature and runs every thread of the grid in turn, so
``CudaKernels(launch_host)`` is the CUDA path with only the launch swapped. It is slow (one column
at a time, no SIMD) and meant for small test shapes.
"""
import ctypes
import os
import subprocess
from pathlib import Path
from typing import Sequence

import torch

from .cpu import build_name
from .cupy_kernel import SOURCE, THREADS_PER_BLOCK, grid_blocks

_DIR = Path(__file__).parent
SHIM_SOURCES = (_DIR / "cuda_host_shim.cpp", _DIR / "cuda_host_shim.h", SOURCE, _DIR / "recurrence_step.h")
SHIM_FLAGS = ("-O2", "-std=c++17", "-shared", "-fPIC")
_library = None


def _extensions_dir() -> Path:
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())


def load_host_library() -> ctypes.CDLL:
    """Build (first call, or after a source changed) and load the host build of the CUDA source."""
    global _library
    if _library is None:
        from torch.utils.cpp_extension import include_paths

        out_dir = _extensions_dir() / build_name("fairseq_srupp_cuda_host", SHIM_SOURCES, SHIM_FLAGS)
        library = out_dir / "cuda_host.so"
        if not library.exists():
            out_dir.mkdir(parents=True, exist_ok=True)
            partial = out_dir / "cuda_host.so.{}".format(os.getpid())  # renamed into place: atomic
            command = ["g++", *SHIM_FLAGS, "-I" + include_paths()[0], str(SHIM_SOURCES[0]), "-o", str(partial)]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError("host build of {} failed:\n{}".format(SOURCE.name, result.stderr))
            partial.replace(library)
        _library = ctypes.CDLL(str(library))
        _library.srupp_host_launch.argtypes = [
            ctypes.c_char_p, ctypes.c_longlong, ctypes.c_longlong, ctypes.POINTER(ctypes.c_longlong), ctypes.c_int,
        ]
        _library.srupp_host_launch.restype = ctypes.c_int
    return _library


def launch_host(name: str, device: torch.device, n_columns: int, args: Sequence) -> None:
    """Run entry point ``name`` over the grid CuPy would launch, one thread after the other."""
    if device.type != "cpu":
        raise ValueError("the host build of the CUDA kernels takes CPU tensors, got {}".format(device))
    values = (ctypes.c_longlong * len(args))(*(int(a) for a in args))
    status = load_host_library().srupp_host_launch(
        name.encode(), grid_blocks(n_columns), THREADS_PER_BLOCK, values, len(args)
    )
    if status != 0:
        raise ValueError("no entry point {} taking {} arguments in {}".format(name, len(args), SOURCE.name))
