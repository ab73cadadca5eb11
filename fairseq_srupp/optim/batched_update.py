"""fairseq's half-precision update with one multi-tensor call per pass instead of one call per parameter.

fairseq's ``FP16Optimizer`` (what ``fairseq-train --fp16`` / ``--bf16`` train with) keeps fp32 copies of
the half-precision parameters: one flat copy for ``--fp16``, one copy per parameter for ``--bf16``. Each
update it copies every half gradient into its fp32 copy, zeroes the copies (``--bf16``) and copies every
updated parameter back, one parameter at a time, and without NVIDIA's apex its gradient clipping takes
one norm per gradient (``fairseq.utils.clip_grad_norm_``). For ``srupp_lm`` at the enwik8-base shape
(103 parameter tensors) that is 421 operations an update besides RAdam's step under ``--bf16`` (counted
on the CPU) and about 210 under ``--fp16``; on a GPU each is a kernel that costs more to launch from
Python than to run.

:func:`install` (called when the plugin registers) replaces those loops with torch's multi-tensor
``_foreach_`` ops over the same tensors: ``_foreach_copy_`` for the two copies, ``_foreach_zero_`` for the
zeroing, ``_foreach_norm`` for the per-gradient norms. The copies and the zeroing give the same bits; the
norms can differ from ``torch.norm``'s in the last bit (another summation order). Every other case (a
pipeline-parallel model's copies on several devices, apex's fused norm, a single gradient, expert
gradients) runs fairseq's own code. ``FAIRSEQ_SRUPP_UPDATE=fairseq`` keeps fairseq's loops throughout
(read at each call).
"""
from collections import defaultdict

import torch

from fairseq_srupp.errors import env_choice

UPDATE_ENV = "FAIRSEQ_SRUPP_UPDATE"
UPDATE_CHOICES = ("foreach", "fairseq")

_originals = {}


def batched() -> bool:
    """Whether the multi-tensor passes are on (``FAIRSEQ_SRUPP_UPDATE``)."""
    return env_choice(UPDATE_ENV, UPDATE_CHOICES) == "foreach"


@torch.no_grad()
def _flat_slices(optimizer, flat, attribute):
    """(half parameters, fp32 views) for a flat copy: each half parameter's slice of ``flat`` (``"data"``)
    or of its gradient (``"grad"``), in fairseq's order, shaped like the parameter. As in fairseq, the
    gradient's slices are laid out over the trainable parameters only, the data's over all of them.
    Made once per optimizer and flat copy (slicing a hundred views costs more than the copy's launch)."""
    source = flat.grad if attribute == "grad" else flat
    key = (attribute, source.data_ptr(), source.numel(), len(optimizer.fp16_params))
    cached = getattr(optimizer, "_srupp_flat_slices", {})
    if key not in cached:
        params = [p for p in optimizer.fp16_params if attribute == "data" or p.requires_grad]
        views, offset = [], 0
        for p in params:
            views.append(source[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
        cached[key] = (params, views)
        optimizer._srupp_flat_slices = cached
    return cached[key]


def _single_flat_copy(optimizer):
    """The flat fp32 copy when there is exactly one (no pipeline parallelism), else None."""
    copies = optimizer.fp32_params
    if optimizer.has_flat_params and isinstance(copies, dict) and len(copies) == 1:
        return next(iter(copies.values()))
    return None


@torch.no_grad()  # in-place writes into leaves without going through .data (a dispatch per tensor)
def sync_fp16_grads_to_fp32(self):
    if not self._needs_sync or not batched():
        return _originals["sync_grads"](self)
    flat = _single_flat_copy(self)
    if self.has_flat_params and flat is None:
        return _originals["sync_grads"](self)
    pairs = []
    if flat is not None:
        for p, v in zip(*_flat_slices(self, flat, "grad")):
            if p.grad is None:  # fairseq copies zeros for a parameter without a gradient
                v.zero_()
            else:
                pairs.append((v, p.grad))
    else:
        for p, p32 in zip(self.fp16_params, self.fp32_params):
            if not p.requires_grad:
                continue
            if p.grad is None:
                p32.grad = torch.zeros_like(p.data, dtype=torch.float)
            elif p32.grad is None:
                p32.grad = p.grad.data.float()
            else:
                pairs.append((p32.grad, p.grad))
    if pairs:
        torch._foreach_copy_([a for a, _ in pairs], [b for _, b in pairs])
    self._needs_sync = False


@torch.no_grad()
def sync_fp32_params_to_fp16(self):
    if not batched():
        return _originals["sync_params"](self)
    flat = _single_flat_copy(self)
    if flat is not None:
        targets, sources = _flat_slices(self, flat, "data")
    elif self.has_flat_params:
        return _originals["sync_params"](self)
    else:
        kept = [(p, p32) for p, p32 in zip(self.fp16_params, self.fp32_params) if p.requires_grad]
        targets, sources = [p for p, _ in kept], [p32 for _, p32 in kept]
    if targets:
        torch._foreach_copy_(targets, sources)


@torch.no_grad()
def zero_grad(self):
    if self.has_flat_params or not batched():
        return _originals["zero_grad"](self)  # a flat copy is one zero_ already
    for p in self.fp16_params:
        p.grad = None
    grads = [p32.grad for p32 in self.fp32_params if p32.grad is not None]
    if grads:
        torch._foreach_zero_(grads)
    self._needs_sync = False
    if self.scaler is not None:
        self._multiply_factor = 1.0 / float(self.scaler.loss_scale)


def total_norm(grads):
    """The 2-norm of all ``grads`` together, as fp32: one ``_foreach_norm`` per device and dtype, then
    the norm of the per-gradient norms (fairseq's formula without apex)."""
    groups = defaultdict(list)
    for g in grads:
        groups[(g.device, g.dtype)].append(g)
    device = grads[0].device
    norms = []
    for group in groups.values():
        norms += [n.to(device) for n in torch._foreach_norm(group, 2, dtype=torch.float32)]
    return torch.norm(torch.stack(norms))


def clip_grad_norm_(params, max_norm, aggregate_norm_fn=None):
    from fairseq import utils

    original = _originals["clip_grad_norm_"]
    if not batched() or utils.multi_tensor_l2norm_available:
        return original(params, max_norm, aggregate_norm_fn)
    params = [params] if isinstance(params, torch.Tensor) else list(params)
    with_grads = [p for p in params if p is not None and getattr(p, "grad", None) is not None]
    if len(with_grads) < 2 or any(hasattr(p, "expert") for p in with_grads):
        return original(params, max_norm, aggregate_norm_fn)
    with torch.no_grad():
        grads = [p.grad for p in with_grads]  # under no_grad: no detach (a dispatch each) needed
        norm = total_norm(grads)
        if aggregate_norm_fn is not None:
            norm = aggregate_norm_fn(norm)
        if max_norm > 0:
            clip_coef = (float(max_norm) / (norm + 1e-6)).clamp_(max=1)
            torch._foreach_mul_(grads, clip_coef)
    return norm


def install() -> None:
    """Replace the loops (idempotent); the originals stay reachable for ``FAIRSEQ_SRUPP_UPDATE=fairseq``."""
    if _originals:
        return
    from fairseq import utils
    from fairseq.optim import fp16_optimizer

    mixin = fp16_optimizer._FP16OptimizerMixin
    _originals.update(sync_grads=mixin._sync_fp16_grads_to_fp32, sync_params=mixin._sync_fp32_params_to_fp16,
                      zero_grad=mixin.zero_grad, clip_grad_norm_=utils.clip_grad_norm_)
    mixin._sync_fp16_grads_to_fp32 = sync_fp16_grads_to_fp32
    mixin._sync_fp32_params_to_fp16 = sync_fp32_params_to_fp16
    mixin.zero_grad = zero_grad
    utils.clip_grad_norm_ = clip_grad_norm_
