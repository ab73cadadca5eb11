"""Fused CPU kernels of the elementwise recurrence (``recurrence_cpu.cpp``), behind the custom op.

The C++ source ships next to this file and is compiled with ``torch.utils.cpp_extension`` on the
first call (about a minute, cached under ``TORCH_EXTENSIONS_DIR``), never at import.
``forward`` / ``backward`` follow the custom op's contract (see ``op.py``); they are registered as
its CPU implementation there.
"""
import hashlib
import logging
import platform
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("recurrence_cpu.cpp")
# Every file the build reads: a change to any of them gives a new build name (see build_name).
BUILD_INPUTS = (_SOURCE, _SOURCE.with_name("recurrence_step.h"))
# -march=native: the kernels run 4-8x faster than on the x86-64 baseline (AVX-512 expf, FMA; see
# README "Builds"), so the build is keyed on the CPU's features (build_name) rather than dropped.
# No -ffast-math: it lets GCC assume there is no NaN or inf. The gates still get glibc's vector
# expf through the declarations in recurrence_cpu.cpp, which need only -fno-math-errno.
# OpenMP: at::parallel_for is serial without it.
CXX_FLAGS = ("-O3", "-std=c++20", "-fopenmp", "-fno-math-errno", "-march=native")
LD_FLAGS = ("-fopenmp",)
_extension = None


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
    """``prefix`` + a hash of the sources, flags, torch version and CPU features: two checkouts, or
    two CPUs sharing one TORCH_EXTENSIONS_DIR, get separate builds instead of rebuilding each other's."""
    digest = hashlib.sha256()
    for path in inputs:
        digest.update(Path(path).read_bytes())
    for part in (*flags, torch.__version__, features):
        digest.update(b"\0" + part.encode())
    return "{}_{}".format(prefix, digest.hexdigest()[:16])


def load_cpu_extension():
    """Compile (first call only, or after the source / CPU changed) and return the C++ extension."""
    global _extension
    if _extension is None:
        from torch.utils.cpp_extension import load

        try:
            logger.info("loading the SRU++ CPU recurrence extension (compiled on first use)")
            _extension = load(
                name=build_name("fairseq_srupp_recurrence_cpu", BUILD_INPUTS, CXX_FLAGS + LD_FLAGS, cpu_features()),
                sources=[str(_SOURCE)],
                extra_cflags=list(CXX_FLAGS),
                extra_ldflags=list(LD_FLAGS),
                verbose=False,
            )
        except Exception as err:  # compiler, ninja or headers missing
            raise ExtensionBuildError(
                "could not build the SRU++ CPU recurrence extension from {}: {}\n"
                "It needs a C++ compiler (g++) and ninja (`pip install ninja`). "
                "Set FAIRSEQ_SRUPP_RECURRENCE=reference to run the slow pure-PyTorch path "
                "instead.".format(_SOURCE, err)
            ) from err
    return _extension


def _compute(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if t is None else t.to(dtype)


def forward(U, x, weight_c, bias, c0, mask_c, mask_pad) -> Tuple[Tensor, Tensor, Tensor]:
    """(h in U's dtype, c_last, c_all in c0's dtype). The C++ loop computes in c0's dtype (fp32 or
    fp64), so 16-bit U and x are widened first."""
    k = U.shape[-1] // c0.shape[-1]
    h, c_all = load_cpu_extension().forward(
        _compute(U, c0.dtype), _compute(x, c0.dtype), weight_c, bias, c0, mask_c, mask_pad, k
    )
    return h.to(U.dtype), c_all[-1].clone(), c_all


def backward(U, x, weight_c, bias, c0, mask_c, mask_pad, c_all, grad_h, grad_c_last):
    """(grad_U, grad_x (empty when k=4), grad_weight_c, grad_bias, grad_c0); see ``op.py``."""
    k = U.shape[-1] // c0.shape[-1]
    grad_U, grad_x, grad_wc, grad_bias, grad_c0 = load_cpu_extension().backward(
        _compute(U, c0.dtype), _compute(x, c0.dtype), weight_c, bias, c0, mask_c, mask_pad, c_all,
        grad_h.to(c0.dtype), grad_c_last, k,
    )
    grad_x = grad_x.to(U.dtype) if k == 3 else U.new_empty(0)
    return grad_U.to(U.dtype), grad_x, grad_wc, grad_bias, grad_c0
