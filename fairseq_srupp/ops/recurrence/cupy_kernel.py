"""CUDA kernels of the elementwise recurrence: the entry points of ``recurrence_cuda.cu``, compiled
by NVRTC through CuPy on the first CUDA call (never at import), cached per device, launched on
PyTorch's current stream. Install CuPy with ``pip install -e .[cuda12]`` (or ``[cuda13]``).

``CudaKernels(launch)`` holds ``forward`` / ``backward`` with the custom op's contract (see
``op.py``); ``launch`` runs one named entry point over a grid. On a GPU that is :func:`launch_cupy`;
the tests put a launcher that runs the same source compiled for the host in its place.
"""
import importlib.util
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("recurrence_cuda.cu")
THREADS_PER_BLOCK = 256
KERNEL_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
STEP_HEADER = SOURCE.with_name("recurrence_step.h")  # the per-step math shared with the C++ path
NVRTC_OPTIONS = ("--std=c++17",)

# launch(entry point name, device, number of (batch, unit) columns, kernel arguments)
Launcher = Callable[[str, torch.device, int, Sequence], None]

_modules: Dict[int, object] = {}


def cupy_available() -> bool:
    return importlib.util.find_spec("cupy") is not None


def kernel_name(direction: str, dtype: torch.dtype, k: int) -> str:
    """Entry point of ``recurrence_cuda.cu``, e.g. ``srupp_forward_bfloat16_k3``."""
    return "srupp_{}_{}_k{}".format(direction, KERNEL_DTYPES[dtype], k)


def grid_blocks(n_columns: int) -> int:
    """One thread per (batch, unit) column, THREADS_PER_BLOCK threads per block."""
    return (n_columns + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK


def kernel_source() -> str:
    """recurrence_cuda.cu with recurrence_step.h pasted in place of its #include: CuPy's kernel
    cache is keyed on the source text, so an edit to the header must change that text too."""
    include = '#include "{}"'.format(STEP_HEADER.name)
    source = SOURCE.read_text()
    if include not in source:
        raise RuntimeError("{} no longer includes {}".format(SOURCE.name, STEP_HEADER.name))
    return source.replace(include, STEP_HEADER.read_text(), 1)


def _module(device_index: int):
    module = _modules.get(device_index)
    if module is None:
        import cupy

        with cupy.cuda.Device(device_index):
            module = cupy.RawModule(code=kernel_source(), options=NVRTC_OPTIONS)
        _modules[device_index] = module
    return module


def pointer(t: Optional[Tensor]) -> np.uint64:
    return np.uint64(0 if t is None else t.data_ptr())


def launch_cupy(name: str, device: torch.device, n_columns: int, args: Sequence) -> None:
    import cupy

    index = device.index if device.index is not None else torch.cuda.current_device()
    with cupy.cuda.Device(index), cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream):
        _module(index).get_function(name)((grid_blocks(n_columns),), (THREADS_PER_BLOCK,), tuple(args))


class CudaKernels:
    """The op's forward / backward for U, x in a kernel dtype and fp32 weight_c, bias, c0, mask_c."""

    def __init__(self, launch: Launcher):
        self.launch = launch

    def forward(self, U, x, weight_c, bias, c0, mask_c, mask_pad):
        L, B, d = U.shape[0], U.shape[1], c0.shape[1]
        k = U.shape[2] // d
        h = torch.empty(L, B, d, dtype=U.dtype, device=U.device)
        c_all = torch.empty(L, B, d, dtype=torch.float32, device=U.device)
        self.launch(kernel_name("forward", U.dtype, k), U.device, B * d, (
            pointer(U), pointer(x), pointer(weight_c), pointer(bias), pointer(c0), pointer(mask_c),
            pointer(mask_pad), pointer(h), pointer(c_all), np.int32(L), np.int32(B), np.int32(d),
        ))
        return h, c_all[-1].clone(), c_all

    def backward(self, U, x, weight_c, bias, c0, mask_c, mask_pad, c_all, grad_h, grad_c_last):
        L, B, d = c_all.shape
        k = U.shape[2] // d
        grad_h = grad_h.to(U.dtype).contiguous()
        grad_c_last = grad_c_last.float().contiguous()
        grad_U = torch.empty_like(U)
        grad_x = torch.empty(L, B, d, dtype=U.dtype, device=U.device) if k == 3 else U.new_empty(0)
        # Per-column partial sums, (2, B, d): summed over B here rather than with atomics.
        grad_wc = torch.empty(2, B, d, dtype=torch.float32, device=U.device)
        grad_bias = torch.empty(2, B, d, dtype=torch.float32, device=U.device)
        grad_c0 = torch.empty(B, d, dtype=torch.float32, device=U.device)
        self.launch(kernel_name("backward", U.dtype, k), U.device, B * d, (
            pointer(U), pointer(x), pointer(weight_c), pointer(bias), pointer(c0), pointer(mask_c),
            pointer(mask_pad), pointer(c_all), pointer(grad_h), pointer(grad_c_last), pointer(grad_U),
            pointer(grad_x if k == 3 else None), pointer(grad_wc), pointer(grad_bias), pointer(grad_c0),
            np.int32(L), np.int32(B), np.int32(d),
        ))
        return grad_U, grad_x, grad_wc.sum(1).view(2 * d), grad_bias.sum(1).view(2 * d), grad_c0


CUPY_KERNELS = CudaKernels(launch_cupy)
