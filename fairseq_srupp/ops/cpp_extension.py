"""Building the project's C++ CPU extensions with ``torch.utils.cpp_extension``, one place for the
flags, the build naming and the error a user sees when no compiler is available.

Sources are compiled on first use (never at import) and cached under ``TORCH_EXTENSIONS_DIR``.
"""
import hashlib
import logging
import platform
from pathlib import Path
from typing import Sequence

import torch

logger = logging.getLogger(__name__)

# -march=native: the kernels run 4-8x faster than on the x86-64 baseline (AVX-512 expf, FMA; see
# README "Builds"), so the build is keyed on the CPU's features (build_name) rather than dropped.
# No -ffast-math: it lets GCC assume there is no NaN or inf. The gates still get glibc's vector
# expf through the declarations in recurrence_cpu.cpp, which need only -fno-math-errno.
# OpenMP: at::parallel_for is serial without it.
CXX_FLAGS = ("-O3", "-std=c++20", "-fopenmp", "-fno-math-errno", "-march=native")
LD_FLAGS = ("-fopenmp",)


class ExtensionBuildError(RuntimeError):
    pass


def cpu_features() -> str:
    """What -march=native depends on: the CPU's feature flags (Linux), else this host's name, so a
    node with an older CPU never loads a build that uses instructions it lacks (SIGILL)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):  # x86 / ARM
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.machine() + " " + platform.node()


def build_name(prefix: str, inputs, flags, features: str = "") -> str:
    """``prefix`` + a hash of the sources (where they are and what they say), flags, torch version
    and CPU features: two checkouts, or two CPUs sharing one TORCH_EXTENSIONS_DIR, get separate
    builds instead of rebuilding each other's. The location counts because the build file names the
    sources by path: a build shared by two identical checkouts was recompiled by ninja whenever the
    other one had used it last."""
    digest = hashlib.sha256()
    for path in inputs:
        digest.update(str(Path(path).resolve()).encode() + b"\0")
        digest.update(Path(path).read_bytes())
    for part in (*flags, torch.__version__, features):
        digest.update(b"\0" + part.encode())
    return "{}_{}".format(prefix, digest.hexdigest()[:16])


class _NoCudaRuntimeNotice(logging.Filter):
    def filter(self, record):
        return not str(record.msg).startswith("No CUDA runtime is found")


def _import_load():
    """``torch.utils.cpp_extension.load``. torch's CUDA build, imported on a machine with nvcc but no GPU,
    warns "No CUDA runtime is found" on stderr as it imports that module: noise for these CPU-only builds,
    and it would be the only line on a clean fairseq-eval-lm's stderr."""
    notices, quiet = logging.getLogger("torch.utils.cpp_extension"), _NoCudaRuntimeNotice()
    notices.addFilter(quiet)
    try:
        from torch.utils.cpp_extension import load
    finally:
        notices.removeFilter(quiet)
    return load


def load_extension(prefix: str, source: Path, inputs: Sequence[Path], what: str, fallback: str):
    """Compile ``source`` (whose build also reads ``inputs``) and return the loaded module.

    ``what`` names the extension in messages, ``fallback`` says how to run without it.
    """
    load = _import_load()
    try:
        logger.info("loading the %s extension (compiled on first use)", what)
        return load(
            name=build_name(prefix, inputs, CXX_FLAGS + LD_FLAGS, cpu_features()),
            sources=[str(source)],
            extra_cflags=list(CXX_FLAGS),
            extra_ldflags=list(LD_FLAGS),
            verbose=False,
        )
    except Exception as err:  # compiler, ninja or headers missing
        raise ExtensionBuildError(
            "could not build the {} extension from {}: {}\n"
            "It needs a C++ compiler (g++) and ninja (`pip install ninja`). {}".format(what, source, err, fallback)
        ) from err
