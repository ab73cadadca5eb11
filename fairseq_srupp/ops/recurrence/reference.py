"""Readable reference of the SRU++ elementwise recurrence (spec §1.4).

A plain time loop with autograd. It is the oracle every fast path is tested
against, so it stays simple and is never rerouted to compiled code.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor


def elementwise_recurrence_ref(
    U: Tensor,
    x: Optional[Tensor],
    weight_c: Tensor,
    bias: Tensor,
    c0: Tensor,
    mask_c: Optional[Tensor] = None,
    mask_pad: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Run the recurrence over time, computing in fp32 (or fp64 if given fp64).

    Args:
        U: (L, B, d * k) with k in {3, 4}; the k values of one hidden unit are adjacent.
        x: (L, B, d) skip input used when k == 3 (the layer's raw input); ignored when k == 4.
        weight_c: (2 * d,) = [v_f ; v_r].
        bias: (2 * d,) = [b_f ; b_r].
        c0: (B, d) initial cell state.
        mask_c: optional (B, d) variational dropout mask, already scaled by 1 / (1 - p).
        mask_pad: optional (L, B) bool, True where the position is padding.

    Returns:
        h: (L, B, d) in the dtype of ``U`` and c_last: (B, d) in the dtype of ``c0`` (the
        dispatcher's dtype rule, see ``fairseq_srupp.ops.recurrence``).
    """
    length, batch = U.shape[0], U.shape[1]
    d = c0.shape[-1]
    k = U.shape[-1] // d
    out_dtype = U.dtype
    compute_dtype = torch.float64 if out_dtype == torch.float64 else torch.float32
    u = U.to(compute_dtype).view(length, batch, d, k)
    v_f, v_r = weight_c.to(compute_dtype).view(2, d)
    b_f, b_r = bias.to(compute_dtype).view(2, d)
    skip = x.to(compute_dtype) if k == 3 else u[..., 3]
    c_prev = c0.to(compute_dtype)
    m = mask_c.to(compute_dtype) if mask_c is not None else None

    hs = []
    for t in range(length):
        f = torch.sigmoid(u[t, :, :, 1] + v_f * c_prev + b_f)
        r = torch.sigmoid(u[t, :, :, 2] + v_r * c_prev + b_r)
        c = u[t, :, :, 0] + (c_prev - u[t, :, :, 0]) * f
        gate = r if m is None else m * r
        h = skip[t] + (c - skip[t]) * gate
        if mask_pad is not None:
            pad = mask_pad[t].view(batch, 1)
            c = torch.where(pad, c_prev, c)
            h = torch.where(pad, torch.zeros_like(h), h)
        hs.append(h)
        c_prev = c
    return torch.stack(hs).to(out_dtype), c_prev.to(c0.dtype)
