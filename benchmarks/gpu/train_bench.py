"""Training throughput at the paper's enwik8-base shape: srupp_lm, the paper's sru.SRUpp model, transformer_lm.

Four models, each trained for --warmup + --repeats steps on random bytes, B=--batch streams of
L=--length tokens per step (the paper's per-GPU batch: 4 x 1024), for every --dtypes entry:

* ``srupp_lm``: this plugin's model as fairseq builds it (``--arch srupp_lm``, dropout 0.22), called
  as the ``srupp_language_modeling`` task calls it: cell state and memory carried from one step to
  the next, so attention spans L memory + L current positions. Its causal mask reaches attention as
  a structure (``FAIRSEQ_SRUPP_ATTENTION=auto``: lower-right ``CausalBias``, flash / memory-efficient
  kernels, no mask tensor);
* ``srupp_lm_half`` (bf16 and fp16 only): the same model trained the way ``fairseq-train --bf16`` /
  ``--fp16`` trains it, as this project's configs do (``configs/base/srupp_train.yaml``): weights and
  activations in half precision, no autocast, fp32 copies of the parameters that RAdam updates, made and
  updated by fairseq's own ``FP16Optimizer`` as its trainer drives it (see :class:`HalfPrecisionUpdate`);
* ``srupp_lm_half_loops`` (last, bf16 only): ``srupp_lm_half`` with ``FAIRSEQ_SRUPP_UPDATE=fairseq``, fairseq's own
  per-parameter loops in ``FP16Optimizer`` instead of the plugin's multi-tensor passes
  (:mod:`fairseq_srupp.optim.batched_update`): the A/B of those;
* ``srupp_lm_additive``: the same model and steps with ``FAIRSEQ_SRUPP_ATTENTION=additive``, the
  additive float mask over [memory; current] of before: the A/B of the mask alone;
* ``srupp_lm_sdpa``: the same with ``FAIRSEQ_SRUPP_ATTENTION=sdpa``: its wide heads (the preset's one
  head of 768) go to SDPA's memory-efficient kernel with the structure, where ``auto`` materialises
  the scores (``transforms.SDPA_MAX_HEAD_DIM``): the A/B of that choice;
* ``sru_reference``: the paper's enwik8 model, Embedding -> dropout -> ``sru.SRUpp`` (its CUDA kernel)
  -> dropout -> Linear, carrying ``c`` and ``saved_inputs`` as memory the way its training script does;
* ``transformer_lm``: fairseq's, sized to about the same parameter count (--transformer
  dim,ffn,layers,heads), same tokens per step, no memory;
* ``srupp_lm_compiled`` (only when named in --models): ``srupp_lm`` with its decoder under
  ``torch.compile`` (--compile-backend; the warm-up steps include compiling). Inside a compiled graph
  the causal mask is the additive tensor (dynamo cannot build the structure), while Inductor fuses the
  elementwise work around the matrix products and the recurrence: dropout, residuals, layer norms,
  the attention's scaling. Compared with ``srupp_lm`` (tokens/s, peak memory).

One loop for all but ``srupp_lm_half``, the paper's: fp32 weights under ``torch.autocast(dtype)``, a
GradScaler for float16, gradient clipping at 1.0, RAdam with decoupled weight decay (``--optimizer radam``'s
``FusedRAdam`` for this project's models and ``transformer_lm``; torch's ``RAdam`` for the paper's model, whose
own script steps a slower per-parameter loop). Reported per model: parameters,
ms per step (median), tokens/s, peak allocated memory (from before the model is built), analytic
training FLOPs per token (``fairseq_srupp.bench.flops``), achieved TFLOP/s and MFU against --peak-tflops
(default: the dense bf16 peak of the GPU's name, see ``peak_bf16_tflops``), and the first and last
loss (finite, or the run failed); for the srupp_lm rows also the SDPA kernel their attention gets at
this shape (``sdpa_kernel``). Then srupp_lm over the reference (tokens/s, peak memory), over the
Transformer (tokens/s) and over srupp_lm_sdpa (tokens/s, peak memory); srupp_lm_sdpa over
srupp_lm_additive (the mask alone); srupp_lm_half over the reference and over srupp_lm.

MFU counts model FLOPs (``fairseq_srupp.bench.flops``): causal attention as the keys a query really
sees, whatever the kernel computes (the additive path scores all L x 2L pairs, the structured one
skips the masked blocks), so the two srupp_lm rows count the same work.
"""
import argparse
import contextlib
import gc
import json
import math
import os
import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from bench_timing import Timer  # noqa: E402
from recurrence_cuda import DTYPES, cuda_time_ms  # noqa: E402

from fairseq_srupp.bench.flops import srupp_flops_per_token, transformer_flops_per_token  # noqa: E402
from fairseq_srupp.bench.generation import build_model, model_cli_args, write_dictionary  # noqa: E402
from fairseq_srupp.bench.half_precision import fp16_optimizer  # noqa: E402
from fairseq_srupp.bench.paper_sru import import_sru  # noqa: E402
from fairseq_srupp.models.srupp_lm import SRUppLMConfig  # noqa: E402
from fairseq_srupp.modules.attention_masks import ATTENTION_ENV, causal_mask  # noqa: E402
from fairseq_srupp.modules.transforms import SDPA_MAX_HEAD_DIM, wants_matmul_attention  # noqa: E402
from fairseq_srupp.optim.batched_update import UPDATE_ENV  # noqa: E402
from fairseq_srupp.optim.fused_radam import FusedRAdam  # noqa: E402
from fairseq_srupp.tasks.carried_state import SegmentContext  # noqa: E402

# srupp_lm's pair first: if the step runs out of time, the A/B of the mask is what was measured.
MODELS = ("srupp_lm", "srupp_lm_half", "srupp_lm_sdpa", "srupp_lm_additive", "sru_reference", "transformer_lm",
          "srupp_lm_half_loops")
OPTIONAL_MODELS = ("srupp_lm_compiled",)  # run only when named in --models
# FAIRSEQ_SRUPP_ATTENTION per model
ATTENTION = {"srupp_lm": "auto", "srupp_lm_half": "auto", "srupp_lm_sdpa": "sdpa", "srupp_lm_additive": "additive",
             "srupp_lm_compiled": "auto", "srupp_lm_half_loops": "auto"}
# FAIRSEQ_SRUPP_UPDATE per model: fairseq's own per-parameter loops in FP16Optimizer, the A/B of the batched update
UPDATE = {"srupp_lm_half_loops": "fairseq"}
HALF_MODELS = ("srupp_lm_half", "srupp_lm_half_loops")  # trained by fairseq's FP16Optimizer
AB_MODELS = ("srupp_lm_additive", "srupp_lm_sdpa", "srupp_lm_half_loops")  # run in --additive-dtypes only
HALF_DTYPES = ("bfloat16", "float16")  # the HALF_MODELS run only in these
TRANSFORMER = "1024,4480,8,16"  # about srupp_lm's 107.6M parameters with a byte vocabulary
# Dense bf16 TFLOP/s by device name (vendor datasheets); the most specific name matches first.
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
                    ("GH200", 989.0), ("A100", 312.0), ("L40S", 362.0), ("A10G", 70.0)]


def peak_bf16_tflops(device_name):
    """Datasheet dense bf16 TFLOP/s for a GPU name, or None when unknown."""
    for key, value in PEAK_BF16_TFLOPS:
        if key in device_name:
            return value
    return None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtypes", nargs="+", choices=DTYPES, default=["bfloat16", "float16"])
    p.add_argument("--models", nargs="+", choices=MODELS + OPTIONAL_MODELS, default=list(MODELS))
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend of srupp_lm_compiled")
    p.add_argument("--additive-dtypes", nargs="+", choices=DTYPES, default=["bfloat16"],
                   help="dtypes the A/B rows (srupp_lm_additive, srupp_lm_sdpa, srupp_lm_half_loops) run in "
                        "(default bf16 only: the MFU target's dtype, within the GPU kit's time)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=209, help="dictionary size: 205 bytes + fairseq's 4 symbols")
    p.add_argument("--srupp", default="", help="hidden,proj,layers overriding --arch srupp_lm (tiny runs)")
    p.add_argument("--transformer", default=TRANSFORMER, help="transformer_lm dim,ffn,layers,heads")
    p.add_argument("--dropout", type=float, default=0.22)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak for MFU (default: by GPU name)")
    p.add_argument("--json", dest="json_out")
    return p.parse_args(argv)


class PaperLM(nn.Module):
    """The paper's enwik8 model around ``sru.SRUpp``; tokens (L, B) -> logits (L, B, V), time-major."""

    def __init__(self, vocab, hidden, proj, layers, dropout, device="cuda"):
        super().__init__()
        sru, failed = import_sru()
        if failed and device == "cuda":  # sru would run a dummy op: nothing to time
            raise RuntimeError("sru's CUDA kernel did not compile: {}".format(failed))

        self.embed = nn.Embedding(vocab, hidden)
        self.drop = nn.Dropout(dropout)
        self.rnn = sru.SRUpp(hidden, hidden, proj, num_layers=layers, dropout=dropout, attn_dropout=dropout,
                             num_heads=1, layer_norm=True, highway_bias=-2.0)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, tokens, c0=None, memory=None):
        """Returns logits (L, B, V), the last cell states (layers, B, d) and this segment's layer inputs."""
        mem_len = 0 if memory is None else memory[0].shape[0]
        mask = causal_mask(tokens.shape[0], mem_len, device=tokens.device)
        h, c, bank = self.rnn(self.drop(self.embed(tokens)), c0, attn_mask=mask, memory=memory)
        return self.out(self.drop(h)), c, bank["saved_inputs"]


def srupp_shape(args):
    """(hidden, proj, layers) of --srupp, else of --arch srupp_lm (its config's defaults)."""
    if args.srupp:
        return tuple(int(v) for v in args.srupp.split(","))
    cfg = SRUppLMConfig()
    return cfg.hidden_size, cfg.proj_size, cfg.num_layers


def build(name, args, dict_dir):
    """(model, forward(tokens (B, L)) -> logits (B, L, V), training FLOPs per token)."""
    opts = Namespace(srupp_arch="srupp_lm", srupp=args.srupp, window=None, transformer=args.transformer,
                     models=["srupp_lm", "transformer_lm"])
    cli = model_cli_args(opts, args.length)
    drop = ["--dropout", args.dropout, "--attn-dropout", args.dropout]
    if name in ATTENTION:
        model = build_model(dict_dir, cli["srupp_lm"] + drop)[0]
        d, p, n = srupp_shape(args)
        decoder = model.decoder
        if name == "srupp_lm_compiled":
            decoder = torch.compile(decoder, backend=args.compile_backend)
        segment = SegmentContext(mask="causal", state="train")  # memory carried from step to step

        def forward(tokens):
            return decoder(tokens, segment=segment)[0]
    elif name == "transformer_lm":
        model = build_model(dict_dir, cli["transformer_lm"] + drop[:2])[0]
        dim, ffn, layers, _ = (int(v) for v in args.transformer.split(","))

        def forward(tokens):
            return model.decoder(tokens)[0]

        return model, forward, transformer_flops_per_token(dim, ffn, layers, args.vocab, args.length)
    else:
        d, p, n = srupp_shape(args)
        model = PaperLM(args.vocab, d, p, n, args.dropout, args.device)
        state = {}

        def forward(tokens):
            logits, c, saved = model(tokens.t(), state.get("c"), state.get("memory"))
            state.update(c=c.detach(), memory=[m.detach() for m in saved])
            return logits.transpose(0, 1)
    return model, forward, srupp_flops_per_token(d, p, n, args.vocab, args.length)


def time_step(step, args, cuda):
    if cuda:
        return cuda_time_ms(step, args.warmup, args.repeats)
    return 1000.0 * Timer().time_fn(step, args.warmup, args.repeats)[0]


def sdpa_kernel_used(mode, args, dtype, device="cuda"):
    """The attention kernel srupp_lm gets in training at this shape on this GPU (memory as long as the
    segment, attention dropout on) under ``FAIRSEQ_SRUPP_ATTENTION=mode``: the score product for ``auto``
    and heads wider than SDPA_MAX_HEAD_DIM, else what ``CausalBias`` picks for the structure (flash, else
    memory-efficient, else a materialised boolean mask), what SDPA picks for the additive float mask."""
    from torch.backends.cuda import SDPAParams, can_use_efficient_attention, can_use_flash_attention
    from torch.nn.attention import SDPBackend

    _, proj, _ = srupp_shape(args)
    heads = SRUppLMConfig().num_heads
    q = torch.empty(args.batch, heads, args.length, proj // heads, device=device, dtype=dtype, requires_grad=True)
    kv = q.new_empty(args.batch, heads, 2 * args.length, proj // heads).requires_grad_(True)
    if mode == "auto" and q.is_cuda and wants_matmul_attention(q, args.dropout):
        return "score product (head dim {} > {})".format(proj // heads, SDPA_MAX_HEAD_DIM)
    if mode != "additive":
        params = SDPAParams(q, kv, kv, None, args.dropout, False, False)
        if can_use_flash_attention(params):
            return "FLASH_ATTENTION"
        return "EFFICIENT_ATTENTION" if can_use_efficient_attention(params) else "boolean mask (materialised)"
    mask = q.new_empty(args.length, 2 * args.length)
    return SDPBackend(torch._fused_sdp_choice(q, kv, kv, mask, args.dropout, False)).name + " (float mask)"


@contextlib.contextmanager
def model_switches(name):
    """``FAIRSEQ_SRUPP_ATTENTION`` and ``FAIRSEQ_SRUPP_UPDATE`` as model ``name`` runs (see ATTENTION and UPDATE);
    unchanged where the model names none."""
    switches = {env: table[name] for env, table in ((ATTENTION_ENV, ATTENTION), (UPDATE_ENV, UPDATE))
                if name in table}
    with mock.patch.dict(os.environ, switches) if switches else contextlib.nullcontext():
        yield


def measure(name, dtype_name, args, dict_dir, device, peak_tflops):
    with model_switches(name):
        return _measure(name, dtype_name, args, dict_dir, device, peak_tflops)


def radam(params, fused=True):
    """``fairseq-train --optimizer radam``'s optimizer (rectified steps through the fused AdamW kernel), or,
    for the paper's model, torch's own RAdam passes (faster than the paper's per-parameter loop)."""
    if fused:
        return FusedRAdam(params, lr=3e-4, weight_decay=0.1)
    return torch.optim.RAdam(params, lr=3e-4, weight_decay=0.1, decoupled_weight_decay=True)


class HalfPrecisionUpdate:
    """The update of ``fairseq-train --fp16`` / ``--bf16``: fairseq's own ``FP16Optimizer`` around
    ``--optimizer radam``, driven as fairseq's trainer drives it: backward of the summed loss (fp16:
    scaled), ``multiply_grads(1 / tokens)``, ``clip_grad_norm(1.0)`` (an fp16 overflow raises
    ``OverflowError`` after halving the scale: the update is skipped, as the trainer skips it), the
    trainer's finiteness check of the norm (a host synchronisation), ``step``, ``zero_grad``.

    The model's parameters stay in half precision; fp32 copies of them are what RAdam updates: one flat
    copy for --fp16, one per parameter for --bf16 (fairseq does not flatten bf16: each update copies, norms
    and zeroes every gradient on its own, in one multi-tensor call each with the plugin loaded, see
    ``srupp_lm_half_loops``). A flat copy needs CUDA (fairseq places it on the current GPU), so on the CPU
    (tests) fp16 is not flattened either. fp16 starts at fairseq's scale of 128; bf16 is not scaled
    (:func:`~fairseq_srupp.bench.half_precision.fp16_optimizer`)."""

    def __init__(self, model, dtype):
        self.params = [p for p in model.parameters() if p.requires_grad]
        flatten = dtype == torch.float16 and self.params[0].is_cuda
        self.optimizer = fp16_optimizer(self.params, dtype, flatten)

    @property
    def scale(self) -> float:
        return 1.0 if self.optimizer.scaler is None else self.optimizer.scaler.loss_scale

    def master_params(self):
        """The fp32 copies RAdam updates, one per parameter (views of the flat copy where there is one)."""
        copies = self.optimizer.fp32_params
        if isinstance(copies, dict):
            (flat,) = copies.values()
            return [v.view_as(p) for p, v in zip(self.params, flat.split([p.numel() for p in self.params]))]
        return list(copies)

    def __call__(self, loss_sum, tokens):
        opt = self.optimizer
        opt.backward(loss_sum)
        opt.multiply_grads(1.0 / tokens)
        try:
            norm = opt.clip_grad_norm(1.0)
        except OverflowError:
            opt.zero_grad()
            return
        if torch.isfinite(norm).all():
            opt.step()
        opt.zero_grad()


def training_step(name, dtype_name, args, dict_dir, device):
    """(model, step() -> None, training FLOPs per token, the losses step appends to): model ``name`` built,
    moved to ``device`` and trained by the paper's loop (see the module's docstring), one update per call.
    Call it under :func:`model_switches`."""
    torch.manual_seed(1)
    model, forward, flops = build(name, args, dict_dir)
    model = model.to(device).train()
    dtype = DTYPES[dtype_name]
    data = torch.randint(4, args.vocab, (args.batch, args.length + 1), device=device)
    losses = []
    if name in HALF_MODELS:
        if dtype_name not in HALF_DTYPES:
            raise ValueError("{} trains in {} only, not {}".format(name, " or ".join(HALF_DTYPES), dtype_name))
        update = HalfPrecisionUpdate(model.to(dtype), dtype)

        def step():
            logits = forward(data[:, :-1])
            tokens = data[:, 1:].numel()
            loss_sum = F.cross_entropy(logits.float().flatten(0, 1), data[:, 1:].flatten(), reduction="sum")
            update(loss_sum, tokens)  # a fairseq criterion's sum, divided by the tokens in multiply_grads
            losses.append(loss_sum.detach() / tokens)

        return model, step, flops, losses

    opt = radam(model.parameters(), fused=name != "sru_reference")
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = forward(data[:, :-1])
            loss = F.cross_entropy(logits.float().flatten(0, 1), data[:, 1:].flatten())
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    return model, step, flops, losses


def _measure(name, dtype_name, args, dict_dir, device, peak_tflops):
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model, step, flops, losses = training_step(name, dtype_name, args, dict_dir, device)
    dtype = DTYPES[dtype_name]
    ms = time_step(step, args, cuda)
    losses = [v.item() for v in losses]
    tokens_per_s = args.batch * args.length / (ms * 1e-3)
    row = {"model": name, "dtype": dtype_name, "params": sum(p.numel() for p in model.parameters()),
           "ms_per_step": ms, "tokens_per_s": tokens_per_s, "flops_per_token": flops,
           "tflops": flops * tokens_per_s / 1e12, "first_loss": losses[0], "last_loss": losses[-1],
           "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}
    row["mfu"] = row["tflops"] / peak_tflops if peak_tflops else None
    if name in ATTENTION and name != "srupp_lm_compiled" and cuda:
        try:  # private torch API: a probe that fails must not lose the row it describes
            row["sdpa_kernel"] = sdpa_kernel_used(ATTENTION[name], args, dtype)
        except Exception as err:  # noqa: BLE001
            row["sdpa_kernel"] = "unknown ({}: {})".format(type(err).__name__, err)
    if not all(math.isfinite(v) for v in losses):
        raise FloatingPointError("non-finite training loss: {}".format(losses))
    del model, step
    gc.collect()
    return row


def failure(model, dtype_name, err):
    """What a run records of a model that failed: its name, dtype and the first line of the error."""
    return {"model": model, "dtype": dtype_name,
            "error": "{}: {}".format(type(err).__name__, str(err).splitlines()[0][:400] if str(err) else "")}


def ratio(rows, dtype, a, b, key):
    va = next((r[key] for r in rows if r["dtype"] == dtype and r["model"] == a and r.get(key)), None)
    vb = next((r[key] for r in rows if r["dtype"] == dtype and r["model"] == b and r.get(key)), None)
    return va / vb if va and vb else None


def run(args, on_row=None):
    """All (dtype, model) measurements; a failing one is recorded with its error and the rest still run.
    ``on_row(partial result)`` is called after each (to save what was measured if the caller is stopped)."""
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or (peak_bf16_tflops(name) if device.type == "cuda" else None)
    rows, errors = [], []
    with tempfile.TemporaryDirectory(prefix="srupp_train_bench_") as tmp:
        write_dictionary(tmp, args.vocab)
        for dtype_name in args.dtypes:
            for model_name in args.models:
                if model_name in AB_MODELS and dtype_name not in args.additive_dtypes:
                    continue
                if model_name in HALF_MODELS and dtype_name not in HALF_DTYPES:
                    continue
                t0 = time.perf_counter()
                try:
                    rows.append(measure(model_name, dtype_name, args, tmp, device, peak))
                except Exception as err:  # noqa: BLE001  (one model failing must not hide the others)
                    errors.append(failure(model_name, dtype_name, err))
                print("{} {}: {:.1f} s".format(model_name, dtype_name, time.perf_counter() - t0), flush=True)
                if on_row is not None:
                    on_row(summarise(args, name, peak, rows, errors))
    return summarise(args, name, peak, rows, errors)


RATIOS = {  # key: (numerator model, denominator model, figure)
    "srupp_over_reference_tokens_per_s": ("srupp_lm", "sru_reference", "tokens_per_s"),
    "srupp_over_reference_peak_memory": ("srupp_lm", "sru_reference", "peak_mib"),
    "srupp_over_transformer_tokens_per_s": ("srupp_lm", "transformer_lm", "tokens_per_s"),
    # the mask alone: both through SDPA (srupp_lm itself may take the score product for wide heads)
    "structured_over_additive_tokens_per_s": ("srupp_lm_sdpa", "srupp_lm_additive", "tokens_per_s"),
    "structured_over_additive_peak_memory": ("srupp_lm_sdpa", "srupp_lm_additive", "peak_mib"),
    "auto_over_sdpa_tokens_per_s": ("srupp_lm", "srupp_lm_sdpa", "tokens_per_s"),
    "auto_over_sdpa_peak_memory": ("srupp_lm", "srupp_lm_sdpa", "peak_mib"),
    "half_over_reference_tokens_per_s": ("srupp_lm_half", "sru_reference", "tokens_per_s"),
    "half_over_reference_peak_memory": ("srupp_lm_half", "sru_reference", "peak_mib"),
    "half_over_autocast_tokens_per_s": ("srupp_lm_half", "srupp_lm", "tokens_per_s"),
    "half_over_autocast_peak_memory": ("srupp_lm_half", "srupp_lm", "peak_mib"),
    "batched_over_loops_tokens_per_s": ("srupp_lm_half", "srupp_lm_half_loops", "tokens_per_s"),
    "compiled_over_eager_tokens_per_s": ("srupp_lm_compiled", "srupp_lm", "tokens_per_s"),
    "compiled_over_eager_peak_memory": ("srupp_lm_compiled", "srupp_lm", "peak_mib"),
}


def summarise(args, device_name, peak, rows, errors):
    ratios = {d: {key: ratio(rows, d, *spec) for key, spec in RATIOS.items()} for d in args.dtypes}
    return {"device": device_name, "peak_bf16_tflops": peak, "batch": args.batch, "length": args.length,
            "rows": list(rows), "errors": list(errors), "ratios": ratios}


def _num(v, spec):
    return "-" if v is None else spec.format(v)


def format_results(result):
    lines = ["Batch {} x {} tokens per step; MFU against {} TFLOP/s (dense bf16).".format(
        result["batch"], result["length"], _num(result["peak_bf16_tflops"], "{:.0f}")), "",
        "| dtype | model | params | ms/step | tokens/s | peak MiB | TFLOP/s | MFU | loss first → last | attention kernel |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        lines.append("| {} | {} | {:.2f}M | {:.1f} | {:,.0f} | {} | {:.1f} | {} | {:.3f} → {:.3f} | {} |".format(
            r["dtype"], r["model"], r["params"] / 1e6, r["ms_per_step"], r["tokens_per_s"],
            _num(r["peak_mib"], "{:,.0f}"), r["tflops"], _num(r["mfu"], "{:.1%}"), r["first_loss"], r["last_loss"],
            r.get("sdpa_kernel") or "-"))
    for e in result["errors"]:
        lines.append("| {} | {} | failed: {} |".format(e["dtype"], e["model"], e["error"].replace("|", "/")))
    lines.append("")
    for dtype, r in result["ratios"].items():
        lines.append("- {}: srupp_lm / sru reference tokens/s {}, peak memory {}; srupp_lm / transformer_lm "
                     "tokens/s {}".format(dtype, _num(r["srupp_over_reference_tokens_per_s"], "{:.2f}x"),
                                          _num(r["srupp_over_reference_peak_memory"], "{:.2f}x"),
                                          _num(r["srupp_over_transformer_tokens_per_s"], "{:.2f}x")))
        if r.get("half_over_autocast_tokens_per_s"):
            lines.append("- {}: srupp_lm_half (fairseq --{}) / sru reference tokens/s {}, peak memory {}; "
                         "srupp_lm_half / srupp_lm (autocast) tokens/s {}, peak memory {}".format(
                             dtype, "bf16" if dtype == "bfloat16" else "fp16",
                             _num(r["half_over_reference_tokens_per_s"], "{:.2f}x"),
                             _num(r["half_over_reference_peak_memory"], "{:.2f}x"),
                             _num(r["half_over_autocast_tokens_per_s"], "{:.2f}x"),
                             _num(r["half_over_autocast_peak_memory"], "{:.2f}x")))
        if r.get("batched_over_loops_tokens_per_s"):
            lines.append("- {}: srupp_lm_half / srupp_lm_half_loops (FP16Optimizer's passes batched / fairseq's "
                         "per-parameter loops): tokens/s {}".format(dtype, _num(r["batched_over_loops_tokens_per_s"],
                                                                               "{:.2f}x")))
        lines.append("- {}: SDPA with the structured causal mask / the additive mask (srupp_lm_sdpa / "
                     "srupp_lm_additive): tokens/s {}, peak memory {}".format(
            dtype, _num(r["structured_over_additive_tokens_per_s"], "{:.2f}x"),
            _num(r["structured_over_additive_peak_memory"], "{:.2f}x")))
        if r.get("auto_over_sdpa_tokens_per_s"):
            lines.append("- {}: srupp_lm default attention / all heads through SDPA (srupp_lm_sdpa): tokens/s {}, "
                         "peak memory {}".format(dtype, _num(r["auto_over_sdpa_tokens_per_s"], "{:.2f}x"),
                                                 _num(r["auto_over_sdpa_peak_memory"], "{:.2f}x")))
        if r.get("compiled_over_eager_tokens_per_s"):
            lines.append("- {}: srupp_lm compiled / eager: tokens/s {}, peak memory {}".format(
                dtype, _num(r["compiled_over_eager_tokens_per_s"], "{:.2f}x"),
                _num(r["compiled_over_eager_peak_memory"], "{:.2f}x")))
    return lines


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda needs a CUDA GPU (use --device cpu with tiny --srupp sizes)")
    result = run(args)
    print("\n".join(format_results(result)))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
