"""``recurrence_cuda.cu`` compiled for the host, so its entry points run on the CPU (tests only).

The .cu file is built as C++ under ``cuda_host_shim.h`` into a small shared library per prefetch
depth (g++, a few seconds, cached like the CPU extension under ``TORCH_EXTENSIONS_DIR``, keyed on
the sources and flags);
:func:`launch_host` has CuPy launcher's signature and runs every thread of the grid in turn, so
``CudaKernels(launch_host)`` is the CUDA path with only the launch swapped. It is slow (one column
at a time, no SIMD) and meant for small test shapes.
"""
import ctypes
import os
import subprocess
from pathlib import Path
from typing import Dict, Sequence, Tuple

import torch

from ..cpp_extension import build_name
from .cupy_kernel import DEFAULT_L2_AHEAD, SOURCE, grid_blocks, launch_threads, nvrtc_options, stage_steps

_DIR = Path(__file__).parent
SHIM_SOURCES = (_DIR / "cuda_host_shim.cpp", _DIR / "cuda_host_shim.h", SOURCE, _DIR / "recurrence_step.h")
SHIM_FLAGS = ("-O2", "-std=c++17", "-shared", "-fPIC")
_libraries: Dict[Tuple[int, int], ctypes.CDLL] = {}  # per prefetch depth and staging


def _extensions_dir() -> Path:
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())


def load_host_library(prefetch: int, stage: int = 0) -> ctypes.CDLL:
    """Build (first call, or after a source changed) and load the host build of the CUDA source
    with ``SRUPP_PREFETCH=prefetch`` and ``SRUPP_STAGE_STEPS=stage``."""
    if (prefetch, stage) not in _libraries:
        from torch.utils.cpp_extension import include_paths

        # the L2 prefetch is a no-op on the host; its address arithmetic still compiles and runs
        flags = SHIM_FLAGS + tuple(o for o in nvrtc_options(prefetch, DEFAULT_L2_AHEAD, stage) if o.startswith("-D"))
        out_dir = _extensions_dir() / build_name("fairseq_srupp_cuda_host", SHIM_SOURCES, flags)
        path = out_dir / "cuda_host.so"
        if not path.exists():
            out_dir.mkdir(parents=True, exist_ok=True)
            partial = out_dir / "cuda_host.so.{}".format(os.getpid())  # renamed into place: atomic
            command = ["g++", *flags, "-I" + include_paths()[0], str(SHIM_SOURCES[0]), "-o", str(partial)]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError("host build of {} failed:\n{}".format(SOURCE.name, result.stderr))
            partial.replace(path)
        library = ctypes.CDLL(str(path))
        library.srupp_host_launch.argtypes = [
            ctypes.c_char_p, ctypes.c_longlong, ctypes.c_longlong, ctypes.POINTER(ctypes.c_longlong), ctypes.c_int,
        ]
        library.srupp_host_launch.restype = ctypes.c_int
        _libraries[prefetch, stage] = library
    return _libraries[prefetch, stage]


# A pretend SM count, so the launch heuristic picks blocks smaller than the largest at test sizes
# (300 columns: 3 full blocks of 96 and a partial one) and the spare threads' bounds check runs.
HOST_SM_COUNT = 4


def launch_host(name: str, device: torch.device, n_columns: int, args: Sequence, prefetch: int) -> None:
    """Run entry point ``name`` over the grid CuPy would launch on a GPU of HOST_SM_COUNT SMs (or with
    FAIRSEQ_SRUPP_CUDA_BLOCK threads per block; the staged kernels' own block size), one thread after the other."""
    if device.type != "cpu":
        raise ValueError("the host build of the CUDA kernels takes CPU tensors, got {}".format(device))
    stage = stage_steps()
    threads = launch_threads(n_columns, HOST_SM_COUNT, stage)
    values = (ctypes.c_longlong * len(args))(*(int(a) for a in args))
    status = load_host_library(prefetch, stage).srupp_host_launch(
        name.encode(), grid_blocks(n_columns, threads), threads, values, len(args)
    )
    if status != 0:
        raise ValueError("no entry point {} taking {} arguments in {}".format(name, len(args), SOURCE.name))
