"""Compile the CUDA recurrence with NVRTC, as CuPy does on a GPU, on a machine without one.

CuPy compiles ``recurrence_cuda.cu`` (with ``recurrence_step.h`` pasted in: ``cupy_kernel.kernel_source``)
through NVRTC at the first CUDA call, with no CUDA headers. nvcc accepts more than bare NVRTC does, and the
host-shim tests compile the file as C++, so neither proves that the GPU will compile it. This script runs
NVRTC itself (the ``nvidia-cuda-nvrtc`` wheel from PyPI, no GPU or driver needed) on every prefetch depth
and a few L2 distances, and the staged kernels at every stage size, with the options
``cupy_kernel.nvrtc_options`` gives, and prints the compiler's log of any that fails.

    python3 -m venv /tmp/nvrtc && /tmp/nvrtc/bin/pip install "nvidia-cuda-nvrtc==13.0.*"
    .venv/bin/python benchmarks/gpu/nvrtc_check.py --lib "$(/tmp/nvrtc/bin/python -c 'import nvidia, os; \
        print(os.path.join(nvidia.__path__[0], "cu13", "lib"))')"
"""
import argparse
import ctypes
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from fairseq_srupp.ops.recurrence.cupy_kernel import (DEFAULT_L2_AHEAD, DEFAULT_PREFETCH,  # noqa: E402
                                                      MAX_PREFETCH, STAGE_STEP_CHOICES, kernel_source,
                                                      nvrtc_options)


def load_nvrtc(folder):
    """libnvrtc from ``folder``, with its builtins library loaded first (NVRTC opens it by name)."""
    folder = Path(folder)
    builtins = sorted(folder.glob("libnvrtc-builtins.so.*"))
    if builtins:
        ctypes.CDLL(str(builtins[0]), mode=ctypes.RTLD_GLOBAL)
    library = sorted(p for p in folder.glob("libnvrtc.so*") if ".alt." not in p.name)
    if not library:
        raise SystemExit("no libnvrtc.so in {}: give the folder of the nvidia-cuda-nvrtc wheel's lib".format(folder))
    return ctypes.CDLL(str(library[0]))


def compile_source(nvrtc, source, options):
    """(True, log) if NVRTC compiles ``source`` with ``options``, else (False, log)."""
    program = ctypes.c_void_p()
    if nvrtc.nvrtcCreateProgram(ctypes.byref(program), source.encode(), b"recurrence_cuda.cu", 0, None, None) != 0:
        raise RuntimeError("nvrtcCreateProgram failed")
    try:
        encoded = [o.encode() for o in options]
        status = nvrtc.nvrtcCompileProgram(program, len(encoded), (ctypes.c_char_p * len(encoded))(*encoded))
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(program, log)
        return status == 0, log.value.decode(errors="replace").strip()
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(program))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lib", required=True, help="folder holding libnvrtc.so (the nvidia-cuda-nvrtc wheel's lib)")
    p.add_argument("--arch", default="sm_90")
    p.add_argument("--l2-ahead", default="0,16,256", help="comma-separated L2 distances (default 0,16,256)")
    args = p.parse_args(argv)
    nvrtc = load_nvrtc(args.lib)
    source = kernel_source()
    builds = [(prefetch, int(l2), 0) for prefetch in range(1, MAX_PREFETCH + 1) for l2 in args.l2_ahead.split(",")]
    # the staged kernels, at each stage size (the prefetch depth and L2 distance do not reach them)
    builds += [(DEFAULT_PREFETCH, DEFAULT_L2_AHEAD, stage) for stage in STAGE_STEP_CHOICES if stage]
    failed = 0
    for prefetch, l2, stage in builds:
        options = list(nvrtc_options(prefetch, l2, stage)) + ["--gpu-architecture=" + args.arch]
        ok, log = compile_source(nvrtc, source, options)
        failed += not ok
        print("P={:<2} L2={:<3} staged={:<2} {}{}".format(prefetch, l2, stage, "ok" if ok else "FAILED",
                                                        "" if ok else "\n" + log))
    print("{} of {} compiled".format(len(builds) - failed, len(builds)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
