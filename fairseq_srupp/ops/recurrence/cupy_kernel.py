"""CUDA path of the elementwise recurrence: the kernels of ``recurrence_cuda.cu``, compiled by NVRTC
through CuPy on the first CUDA call (never at import), cached per device, launched on PyTorch's
current stream. Install CuPy with ``pip install -e .[cuda12]`` (or ``[cuda13]``).
"""
import importlib.util
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("recurrence_cuda.cu")
THREADS_PER_BLOCK = 256
KERNEL_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
NVRTC_OPTIONS = ("--std=c++17",)

_modules: Dict[int, object] = {}


def cupy_available() -> bool:
    return importlib.util.find_spec("cupy") is not None


def kernel_name(direction: str, dtype: torch.dtype, k: int) -> str:
    """Entry point of ``recurrence_cuda.cu``, e.g. ``srupp_forward_bfloat16_k3``."""
    return "srupp_{}_{}_k{}".format(direction, KERNEL_DTYPES[dtype], k)


def _module(device_index: int):
    module = _modules.get(device_index)
    if module is None:
        import cupy

        with cupy.cuda.Device(device_index):
            module = cupy.RawModule(code=SOURCE.read_text(), options=NVRTC_OPTIONS)
        _modules[device_index] = module
    return module


def _pointer(t: Optional[Tensor]) -> np.uint64:
    return np.uint64(0 if t is None else t.data_ptr())


def _launch(name: str, device: torch.device, n_columns: int, args) -> None:
    import cupy

    index = device.index if device.index is not None else torch.cuda.current_device()
    blocks = (n_columns + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK
    with cupy.cuda.Device(index), cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream):
        _module(index).get_function(name)((blocks,), (THREADS_PER_BLOCK,), args)


class ElementwiseRecurrenceCUDA(torch.autograd.Function):
    """Inputs: U, x (or None) in one kernel dtype, contiguous; weight_c, bias, c0, mask_c fp32."""

    @staticmethod
    def forward(ctx, U, x, weight_c, bias, c0, mask_c, mask_pad):
        L, B, d = U.shape[0], U.shape[1], c0.shape[1]
        k = U.shape[2] // d
        h = torch.empty(L, B, d, dtype=U.dtype, device=U.device)
        c_all = torch.empty(L, B, d, dtype=torch.float32, device=U.device)
        _launch(kernel_name("forward", U.dtype, k), U.device, B * d, (
            _pointer(U), _pointer(x), _pointer(weight_c), _pointer(bias), _pointer(c0), _pointer(mask_c),
            _pointer(mask_pad), _pointer(h), _pointer(c_all), np.int32(L), np.int32(B), np.int32(d),
        ))
        ctx.k = k
        ctx.save_for_backward(U, x, weight_c, bias, c0, mask_c, mask_pad, c_all)
        ctx.mark_non_differentiable(c_all)
        return h, c_all[-1].clone()

    @staticmethod
    def backward(ctx, grad_h, grad_c_last):
        U, x, weight_c, bias, c0, mask_c, mask_pad, c_all = ctx.saved_tensors
        L, B, d = c_all.shape
        grad_h = torch.zeros_like(c_all, dtype=U.dtype) if grad_h is None else grad_h.to(U.dtype).contiguous()
        grad_c_last = torch.zeros_like(c0) if grad_c_last is None else grad_c_last.float().contiguous()
        grad_U = torch.empty_like(U)
        grad_x = torch.empty(L, B, d, dtype=U.dtype, device=U.device) if ctx.k == 3 else None
        grad_wc = torch.empty(2, B, d, dtype=torch.float32, device=U.device)
        grad_bias = torch.empty(2, B, d, dtype=torch.float32, device=U.device)
        grad_c0 = torch.empty(B, d, dtype=torch.float32, device=U.device)
        _launch(kernel_name("backward", U.dtype, ctx.k), U.device, B * d, (
            _pointer(U), _pointer(x), _pointer(weight_c), _pointer(bias), _pointer(c0), _pointer(mask_c),
            _pointer(mask_pad), _pointer(c_all), _pointer(grad_h), _pointer(grad_c_last), _pointer(grad_U),
            _pointer(grad_x), _pointer(grad_wc), _pointer(grad_bias), _pointer(grad_c0),
            np.int32(L), np.int32(B), np.int32(d),
        ))
        return grad_U, grad_x, grad_wc.sum(1).view(2 * d), grad_bias.sum(1).view(2 * d), grad_c0, None, None


def elementwise_recurrence_cuda(
    U: Tensor,
    x: Optional[Tensor],
    weight_c: Tensor,
    bias: Tensor,
    c0: Tensor,
    mask_c: Optional[Tensor] = None,
    mask_pad: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Same contract as :func:`elementwise_recurrence_ref` for CUDA tensors of float32, float16 or
    bfloat16 (arithmetic in fp32). Non-contiguous inputs are made contiguous. When U and x differ in
    dtype (autocast: fp16 U, fp32 residual) both run as float32. h comes back in that dtype, the last
    cell state in c0's dtype."""
    if U.dtype not in KERNEL_DTYPES:
        raise TypeError("the CUDA recurrence takes float32, float16 or bfloat16, got {}".format(U.dtype))
    k = U.shape[-1] // c0.shape[-1]
    dtype = U.dtype if (k == 4 or x is None or x.dtype == U.dtype) else torch.float32

    def fp32(t):
        return None if t is None else t.float().contiguous()

    h, c_last = ElementwiseRecurrenceCUDA.apply(
        U.to(dtype).contiguous(),
        x.to(dtype).contiguous() if k == 3 else None,
        fp32(weight_c),
        fp32(bias),
        fp32(c0),
        fp32(mask_c),
        None if mask_pad is None else mask_pad.to(torch.bool).contiguous(),
    )
    return h, c_last.to(c0.dtype)
