"""CUDA kernels of the elementwise recurrence: the entry points of ``recurrence_cuda.cu``, compiled
by NVRTC through CuPy on the first CUDA call (never at import), cached per device, launched on
PyTorch's current stream. Install CuPy with ``pip install -e .[cuda12]`` (or ``[cuda13]``).

``CudaKernels(launch)`` holds ``forward`` / ``backward`` with the custom op's contract (see
``op.py``); ``launch`` runs one named entry point over a grid. On a GPU that is :func:`launch_cupy`;
the tests put a launcher that runs the same source compiled for the host in its place.

Storage: U is read in its own dtype, also when it is 16-bit next to an fp32 x (autocast), and
grad_U comes back in it; h, grad_x in x's dtype (U's when k=4). Prefetch depth: the kernels keep the
loads of the next ``SRUPP_PREFETCH`` time steps in flight, a compile-time constant;
:data:`DEFAULT_PREFETCH` unless ``FAIRSEQ_SRUPP_CUDA_PREFETCH`` says otherwise (read at every call,
so a benchmark can A/B depths in one process; one compiled module per device and depth).

Staging: with ``FAIRSEQ_SRUPP_CUDA_STAGE_STEPS`` = 4, 8 or 16 the kernels are compiled to copy their
inputs into shared memory instead (cp.async, that many time steps a stage, two stages ahead), in blocks
of :data:`STAGED_THREAD_STEPS` / steps threads; 0 (:data:`DEFAULT_STAGE_STEPS`) keeps the register ring.
"""
import importlib.util
import os
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ...errors import SRUppUserError, env_choice, env_int

SOURCE = Path(__file__).with_name("recurrence_cuda.cu")
THREADS_PER_BLOCK = 256  # the most threads per block the launch heuristic uses
BLOCK_ENV = "FAIRSEQ_SRUPP_CUDA_BLOCK"
KERNEL_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
# (U's dtype, x's = h's dtype) pairs besides equal ones that have entry points (k=3 only: k=4 has no x).
MIXED_STORAGE = ((torch.float16, torch.float32), (torch.bfloat16, torch.float32))
STEP_HEADER = SOURCE.with_name("recurrence_step.h")  # the per-step math shared with the C++ path
PREFETCH_ENV = "FAIRSEQ_SRUPP_CUDA_PREFETCH"
# Measured on an H100 (benchmarks/results/2026-11-27-h100, L=1024 d=3072 bf16): at B=16 depth 4 was
# the fastest, with 1 and 2 within 1% and 8 / 16 30% / 75% slower; at B=4 all of 1-8 within 3%. That
# was before the kernels kept their loads in flight (benchmarks/gpu/sass_prefetch.py): the depth then
# made no difference. To be measured again.
DEFAULT_PREFETCH = 4
MAX_PREFETCH = 16  # the static_assert in recurrence_cuda.cu
L2_AHEAD_ENV = "FAIRSEQ_SRUPP_CUDA_L2_AHEAD"
# Time steps ahead whose inputs each step asks L2 for (prefetch.global.L2); 0: none. Unmeasured: the
# GPU kit's recurrence step compares 0, 16 and 32.
DEFAULT_L2_AHEAD = 16
MAX_L2_AHEAD = 256  # the static_assert in recurrence_cuda.cu

STAGE_ENV = "FAIRSEQ_SRUPP_CUDA_STAGE_STEPS"
# The static_assert in recurrence_cuda.cu; the first, 0 (the register ring), is the default. Unmeasured: the
# GPU kit's recurrence step times them side by side.
STAGE_STEP_CHOICES = (0, 4, 8, 16)
DEFAULT_STAGE_STEPS = STAGE_STEP_CHOICES[0]
# Threads per block times steps per stage of the staged kernels: their 3 stages of up to 7 words (28 bytes)
# per thread and step take 43 KB of the 48 KB of static shared memory a block may have.
STAGED_THREAD_STEPS = 512

# launch(entry point name, device, number of (batch, unit) columns, kernel arguments, prefetch depth)
Launcher = Callable[[str, torch.device, int, Sequence, int], None]

_modules: Dict[Tuple[int, int, int, int], object] = {}  # per device, prefetch depth, L2 distance and staging


def cupy_available() -> bool:
    return importlib.util.find_spec("cupy") is not None


def prefetch_depth() -> int:
    """Time steps the kernels load ahead: ``FAIRSEQ_SRUPP_CUDA_PREFETCH`` or :data:`DEFAULT_PREFETCH`."""
    return env_int(PREFETCH_ENV, DEFAULT_PREFETCH, 1, MAX_PREFETCH, "the number of time steps the CUDA recurrence "
                   "loads ahead")


def l2_ahead() -> int:
    """Time steps ahead the kernels ask L2 for: ``FAIRSEQ_SRUPP_CUDA_L2_AHEAD`` or :data:`DEFAULT_L2_AHEAD`."""
    return env_int(L2_AHEAD_ENV, DEFAULT_L2_AHEAD, 0, MAX_L2_AHEAD, "how many time steps ahead the CUDA recurrence "
                   "asks the L2 cache for its inputs", low_means="never")


def stage_steps() -> int:
    """Time steps a stage of the staged kernels holds, 0 for the register ring: ``FAIRSEQ_SRUPP_CUDA_STAGE_STEPS``
    or :data:`DEFAULT_STAGE_STEPS`."""
    return int(env_choice(STAGE_ENV, tuple(str(v) for v in STAGE_STEP_CHOICES)))


def staged_threads(steps: int) -> int:
    """Threads per block of the staged kernels at ``steps`` time steps a stage."""
    return STAGED_THREAD_STEPS // steps


def nvrtc_options(prefetch: int, l2: int = DEFAULT_L2_AHEAD, stage: int = DEFAULT_STAGE_STEPS) -> Tuple[str, ...]:
    options = ("--std=c++17", "-DSRUPP_PREFETCH={}".format(prefetch), "-DSRUPP_L2_AHEAD={}".format(l2),
               "-DSRUPP_STAGE_STEPS={}".format(stage))
    return options + (("-DSRUPP_STAGED_THREADS={}".format(staged_threads(stage)),) if stage else ())


def kernel_name(direction: str, dtype: torch.dtype, k: int, x_dtype: Optional[torch.dtype] = None) -> str:
    """Entry point of ``recurrence_cuda.cu`` for U in ``dtype`` and x / h in ``x_dtype`` (default:
    the same), e.g. ``srupp_forward_bfloat16_k3`` or ``srupp_backward_bfloat16_float32_k3``."""
    x_dtype = dtype if x_dtype is None else x_dtype
    if x_dtype != dtype and (k != 3 or (dtype, x_dtype) not in MIXED_STORAGE):
        raise ValueError("no CUDA recurrence kernel for U in {} and x in {} with k={}".format(dtype, x_dtype, k))
    x_part = "" if x_dtype == dtype else "_" + KERNEL_DTYPES[x_dtype]
    return "srupp_{}_{}{}_k{}".format(direction, KERNEL_DTYPES[dtype], x_part, k)


def kernel_variants():
    """(U's dtype, x's dtype, k) of every entry-point pair in ``recurrence_cuda.cu``."""
    same = [(dtype, dtype, k) for dtype in KERNEL_DTYPES for k in (3, 4)]
    return same + [(u_dtype, x_dtype, 3) for u_dtype, x_dtype in MIXED_STORAGE]


def threads_per_block(n_columns: int, sm_count: int) -> int:
    """Threads per block for ``n_columns`` threads on a GPU with ``sm_count`` SMs:
    ``FAIRSEQ_SRUPP_CUDA_BLOCK`` if set (a multiple of 32 up to THREADS_PER_BLOCK), else the fewest
    warps per block that still give every SM a block, at most THREADS_PER_BLOCK.

    Why spread: each thread walks 1024+ dependent time steps, so a launch lasts as long as one
    column does and fewer threads per SM cost nothing, while more SMs bring more load/store units
    to the steps' memory traffic. At enwik8-base's training shape (B=4, d=3072) 256 threads per
    block give 48 blocks, a third of an H100's 132 SMs; 96 threads give 128 blocks. Measured on an
    H100 (benchmarks/results/2026-11-27-h100): at B=16 auto, 256, 128 and 64 threads within 2%; at
    B=4 64 threads 5% ahead of auto, which is within that run's repeat-to-repeat spread (the same
    auto launch measured 1.56-1.70 ms), so the heuristic stays.
    """
    value = os.environ.get(BLOCK_ENV, "").strip()
    if value:
        if not value.isdigit() or int(value) % 32 or not 32 <= int(value) <= THREADS_PER_BLOCK:
            raise SRUppUserError("{}={!r}: give the CUDA recurrence's threads per block, a multiple of 32 from 32 "
                                 "to {} (unset: spread over the GPU's SMs)".format(BLOCK_ENV, value, THREADS_PER_BLOCK))
        return int(value)
    per_sm = -(-n_columns // max(sm_count, 1))
    return min(THREADS_PER_BLOCK, max(32, -(-per_sm // 32) * 32))


def launch_threads(n_columns: int, sm_count: int, stage: int) -> int:
    """Threads per block of a launch: :func:`staged_threads` for the staged kernels (their shared memory is
    sized for it), else :func:`threads_per_block`."""
    if not stage:
        return threads_per_block(n_columns, sm_count)
    if os.environ.get(BLOCK_ENV, "").strip():
        raise SRUppUserError("{} and {}={} cannot be combined: the staged CUDA recurrence runs {} threads per block "
                             "(unset one of them)".format(BLOCK_ENV, STAGE_ENV, stage, staged_threads(stage)))
    return staged_threads(stage)


def grid_blocks(n_columns: int, threads: int = THREADS_PER_BLOCK) -> int:
    """One thread per (batch, unit) column, ``threads`` threads per block."""
    return (n_columns + threads - 1) // threads


_sm_counts: Dict[int, int] = {}


def sm_count(device_index: int) -> int:
    if device_index not in _sm_counts:
        _sm_counts[device_index] = torch.cuda.get_device_properties(device_index).multi_processor_count
    return _sm_counts[device_index]


def kernel_source() -> str:
    """recurrence_cuda.cu with recurrence_step.h pasted in place of its #include: CuPy's kernel
    cache is keyed on the source text, so an edit to the header must change that text too."""
    include = '#include "{}"'.format(STEP_HEADER.name)
    source = SOURCE.read_text()
    if include not in source:
        raise RuntimeError("{} no longer includes {}".format(SOURCE.name, STEP_HEADER.name))
    return source.replace(include, STEP_HEADER.read_text(), 1)


def _module(device_index: int, prefetch: int, stage: int):
    key = (device_index, prefetch, l2_ahead(), stage)
    module = _modules.get(key)
    if module is None:
        import cupy

        with cupy.cuda.Device(device_index):
            module = cupy.RawModule(code=kernel_source(), options=nvrtc_options(prefetch, key[2], stage))
        _modules[key] = module
    return module


def pointer(t: Optional[Tensor]) -> np.uint64:
    return np.uint64(0 if t is None else t.data_ptr())


def launch_cupy(name: str, device: torch.device, n_columns: int, args: Sequence, prefetch: int) -> None:
    import cupy

    index = device.index if device.index is not None else torch.cuda.current_device()
    stage = stage_steps()
    threads = launch_threads(n_columns, sm_count(index), stage)
    with cupy.cuda.Device(index), cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream):
        kernel = _module(index, prefetch, stage).get_function(name)
        kernel((grid_blocks(n_columns, threads),), (threads,), tuple(args))


class CudaKernels:
    """The op's forward / backward for U in a kernel dtype, x in U's dtype or (16-bit U) fp32, and fp32
    weight_c, bias, c0, mask_c."""

    def __init__(self, launch: Launcher):
        self.launch = launch

    def forward(self, U, x, weight_c, bias, c0, mask_c, mask_pad):
        L, B, d = U.shape[0], U.shape[1], c0.shape[1]
        k = U.shape[2] // d
        h_dtype = U.dtype if x is None else x.dtype
        h = torch.empty(L, B, d, dtype=h_dtype, device=U.device)
        c_all = torch.empty(L, B, d, dtype=torch.float32, device=U.device)
        self.launch(kernel_name("forward", U.dtype, k, h_dtype), U.device, B * d, (
            pointer(U), pointer(x), pointer(weight_c), pointer(bias), pointer(c0), pointer(mask_c),
            pointer(mask_pad), pointer(h), pointer(c_all), np.int32(L), np.int32(B), np.int32(d),
        ), prefetch_depth())
        return h, c_all[-1].clone(), c_all

    def backward(self, U, x, weight_c, bias, c0, mask_c, mask_pad, c_all, grad_h, grad_c_last):
        L, B, d = c_all.shape
        k = U.shape[2] // d
        h_dtype = U.dtype if x is None else x.dtype
        grad_h = grad_h.to(h_dtype).contiguous()
        grad_c_last = grad_c_last.float().contiguous()
        grad_U = torch.empty_like(U)
        grad_x = torch.empty(L, B, d, dtype=h_dtype, device=U.device) if k == 3 else U.new_empty(0)
        # Per-column partial sums, (2, B, d): summed over B here rather than with atomics.
        grad_wc = torch.empty(2, B, d, dtype=torch.float32, device=U.device)
        grad_bias = torch.empty(2, B, d, dtype=torch.float32, device=U.device)
        grad_c0 = torch.empty(B, d, dtype=torch.float32, device=U.device)
        self.launch(kernel_name("backward", U.dtype, k, h_dtype), U.device, B * d, (
            pointer(U), pointer(x), pointer(weight_c), pointer(bias), pointer(c0), pointer(mask_c),
            pointer(mask_pad), pointer(c_all), pointer(grad_h), pointer(grad_c_last), pointer(grad_U),
            pointer(grad_x if k == 3 else None), pointer(grad_wc), pointer(grad_bias), pointer(grad_c0),
            np.int32(L), np.int32(B), np.int32(d),
        ), prefetch_depth())
        return grad_U, grad_x, grad_wc.sum(1).view(2 * d), grad_bias.sum(1).view(2 * d), grad_c0


CUPY_KERNELS = CudaKernels(launch_cupy)
