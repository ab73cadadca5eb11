"""Generation benchmark: incremental decoding of ``srupp_lm`` against fairseq's ``transformer_lm``.

Both models, of about the same parameter count and with random weights, are built through fairseq
(task ``language_modeling`` over a byte-level dictionary written to a temporary directory) and
generate ``--lengths`` tokens each, side by side in one process (for every length, one model after
the other), in eval mode under ``torch.no_grad()``.

The loop is the one fairseq's ``SequenceGenerator`` runs, without beam bookkeeping: the decoder is
called with the whole prefix and one incremental state per run,
``model.decoder(tokens[:, :t + 1], incremental_state=state)``, and reads only what it has not seen
(the Transformer the last token; SRU++ the tokens after the ones it has consumed). The next token
is the argmax (or a sample, ``--sampling``) of the last position's logits over the byte symbols
(fairseq's special symbols excluded, so no padding or end of sentence is ever fed back).

Per model and length it reports tokens/s, ms per token over the first and the last ``span`` tokens
of the run (span = min(1000, length // 2): flat for constant work per token, rising for attention
over a growing prefix), the bytes held by the incremental state at the end, and the growth of peak
memory during the run: on CPU the process's peak RSS (reset before each run through
``/proc/self/clear_refs``, freed heap returned first with ``malloc_trim``), on CUDA also
``torch.cuda.max_memory_allocated``. Then, per model, time per token and memory at the longest
length over the shortest, and per length SRU++ over the Transformer.
"""
import argparse
import copy
import ctypes
import ctypes.util
import gc
import json
import math
import os
import re
import tempfile
import time
from pathlib import Path

import torch

from fairseq_srupp.cli_args import (
    int_fields, int_list, non_negative_int, positive_int, positive_int_fields, transformer_heads_problem,
)

DEFAULT_LENGTHS = "1000,4000,16000"
SPAN = 1000  # tokens over which the first / last ms per token are measured (at most half the run)
WARMUP_TOKENS = 32
MODELS = ("srupp_lm", "srupp_lm_stepper", "transformer_lm")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MIB = float(1 << 20)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Sizes, counts and lists are checked here: a bad one ends in one argparse error line.
    p.add_argument("--lengths", type=int_list(2), default=DEFAULT_LENGTHS,
                   help="comma-separated numbers of generated tokens (each >= 2)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--batch", type=positive_int, default=1, help="sequences generated at once")
    p.add_argument("--window", type=positive_int, default=None,
                   help="SRU++ attention window at inference (default: the model's eval_window)")
    p.add_argument("--srupp-arch", default="srupp_lm_tiny")
    p.add_argument("--srupp", type=positive_int_fields("hidden,proj,layers"), default=None,
                   help="SRU++ hidden,proj,layers overriding the arch (e.g. 256,128,4)")
    p.add_argument("--transformer", type=positive_int_fields("dim,ffn,layers,heads"), default="128,448,4,4",
                   help="transformer_lm dim,ffn,layers,heads (default: about srupp_lm_tiny's parameter count)")
    p.add_argument("--vocab", type=int, default=205, help="dictionary size, fairseq's 4 special symbols included")
    p.add_argument("--sampling", action="store_true", help="sample the next token instead of the argmax")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=non_negative_int, default=0,
                   help="torch threads (0: the CPUs this process may use)")
    p.add_argument("--sequence-generator", type=non_negative_int, default=0, metavar="N",
                   help="also time fairseq's SequenceGenerator (beam 1) generating N tokens per model (0: off)")
    p.add_argument("--models", default="srupp_lm,transformer_lm",
                   help="which models to run, of {}: srupp_lm_stepper is srupp_lm decoded by a TokenStepper "
                        "(--decoding)".format(",".join(MODELS)))
    p.add_argument("--decoding", default="auto", choices=["auto", "cache", "ring", "graph"],
                   help="srupp_lm_stepper's mode (auto: a CUDA graph per token on a GPU, the incremental "
                        "state elsewhere; see fairseq_srupp/models/token_stepper.py)")
    p.add_argument("--no-malloc-tuning", action="store_true",
                   help="keep glibc's default mmap / trim thresholds (benchmarks/generation.py tunes them, "
                        "see benchmarks/bench_timing.py: tune_malloc)")
    p.add_argument("--json", dest="json_out", help="write the results to this JSON file")
    args = p.parse_args(argv)
    problem = transformer_heads_problem(args.transformer)
    if problem is not None:
        p.error(problem)
    if args.vocab < 5:
        p.error("--vocab must leave room for at least one byte symbol after the 4 special symbols")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(args.models) - set(MODELS)
    if unknown or not args.models:
        p.error("--models takes {}, got {}".format(" and/or ".join(MODELS), ",".join(sorted(unknown)) or "nothing"))
    if args.decoding == "graph" and args.device != "cuda":
        p.error("--decoding graph replays CUDA graphs: it needs --device cuda")
    return args


# ----------------------------------------------------------------------------------- models


def write_dictionary(directory, vocab):
    """A byte-level dict.txt of ``vocab - 4`` symbols (decimal byte values, newline excluded: it is </s>)."""
    symbols = [str(b) for b in range(256) if b != 10][: vocab - 4]
    with open(os.path.join(directory, "dict.txt"), "w") as f:
        for s in symbols:
            f.write("{} 1\n".format(s))
    return directory


def model_cli_args(args, max_positions):
    """fairseq command-line arguments of each model."""
    specs = {}
    srupp = ["--arch", args.srupp_arch]
    if args.srupp:
        d, p, n = int_fields(args.srupp)
        srupp += ["--hidden-size", d, "--proj-size", p, "--num-layers", n]
    if args.window is not None:
        srupp += ["--eval-window", args.window]
    specs["srupp_lm"] = specs["srupp_lm_stepper"] = srupp
    dim, ffn, layers, heads = int_fields(args.transformer)
    # Sinusoidal positions (fairseq's default for transformer_lm): no learned table to size, but
    # max_target_positions bounds what SequenceGenerator agrees to generate.
    specs["transformer_lm"] = [
        "--arch", "transformer_lm", "--decoder-embed-dim", dim, "--decoder-input-dim", dim,
        "--decoder-output-dim", dim, "--decoder-ffn-embed-dim", ffn, "--decoder-layers", layers,
        "--decoder-attention-heads", heads, "--tokens-per-sample", max_positions,
        "--max-target-positions", max_positions,
    ]
    return {name: specs[name] for name in args.models}


def build_model(data_dir, cli_args):
    """Build a fairseq model exactly as fairseq-train would from these arguments; return (model, task)."""
    import fairseq_srupp  # noqa: F401  (registers srupp_lm)
    from fairseq import options, tasks

    parser = options.get_training_parser()
    argv = [str(data_dir), "--task", "language_modeling", "--dropout", "0"] + [str(a) for a in cli_args]
    ns = options.parse_args_and_arch(parser, argv)
    task = tasks.setup_task(ns)
    model = task.build_model(ns)
    return model, task


# ----------------------------------------------------------------------------------- memory


def incremental_state_bytes(state):
    """Bytes of the distinct tensor storages an incremental state holds."""
    seen, total = set(), 0
    stack = [state]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif hasattr(item, "held_tensors"):  # a TokenStepper, as srupp_lm's incremental state may hold
            stack.extend(item.held_tensors())
        elif torch.is_tensor(item):
            storage = item.untyped_storage()
            key = (storage.device, storage.data_ptr())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
    return total


def _proc_status_kib(field):
    try:
        with open("/proc/self/status") as f:
            m = re.search(r"^{}:\s+(\d+) kB".format(field), f.read(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


class PeakMemory:
    """Growth of peak memory over a block: peak RSS on CPU (Linux), and allocated CUDA memory."""

    def __init__(self, device):
        self.device = device
        self.libc = None
        try:
            self.libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            self.libc.malloc_trim  # glibc only
        except (OSError, AttributeError):
            self.libc = None

    def _reset_rss_peak(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            return True
        except OSError:
            return False

    def __enter__(self):
        gc.collect()
        if self.libc is not None:
            self.libc.malloc_trim(0)
        self.rss_resettable = self._reset_rss_peak()
        self.rss_start = _proc_status_kib("VmRSS")
        if not self.rss_resettable:  # fall back to the high-water mark as it stands
            self.rss_start = _proc_status_kib("VmHWM")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.cuda_start = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc):
        peak = _proc_status_kib("VmHWM")
        self.result = {"rss_peak_growth_mib": None if peak is None or self.rss_start is None
                       else max(0, peak - self.rss_start) / 1024.0}
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak_cuda = torch.cuda.max_memory_allocated(self.device)
            self.result["cuda_max_allocated_mib"] = peak_cuda / MIB
            self.result["cuda_peak_growth_mib"] = (peak_cuda - self.cuda_start) / MIB
        return False


# ----------------------------------------------------------------------------------- generation


def span_of(length):
    return max(1, min(SPAN, length // 2))


def generate(model, length, batch, device, sampling=False, generator=None, nspecial=4, stepper=None, state=None):
    """Generate ``length`` tokens after a beginning-of-sentence, one decoder call per token: with the
    whole prefix and fairseq's incremental state (``state``, default a new one; ``srupp_lm`` keeps a
    ``TokenStepper`` in it where its ring fits in memory), or through ``stepper`` (a ``TokenStepper``:
    a fixed-shape ring, one CUDA graph per token on a GPU).

    Returns the generated tokens (batch, length), the cumulative seconds at the checkpoints
    {0, span, length - span, length} and the decoding state's bytes at the end.
    """
    decoder = model.decoder
    eos = decoder.dictionary.eos()
    tokens = torch.full((batch, length + 1), decoder.dictionary.pad(), dtype=torch.long, device=device)
    tokens[:, 0] = eos  # fairseq starts generation from </s>
    state = {} if state is None else state
    span = span_of(length)
    marks = {0, span, length - span, length}
    cuda = device.type == "cuda"
    times = {}
    start = time.perf_counter()
    for t in range(length):
        if t in marks:
            if cuda:
                torch.cuda.synchronize(device)
            times[t] = time.perf_counter() - start
        if stepper is None:
            logits = decoder(tokens[:, : t + 1], incremental_state=state)[0][:, -1]
        elif t == 0:
            logits = stepper.prompt(tokens[:, :1])
        else:
            logits = stepper.step(tokens[:, t])
        scores = logits[:, nspecial:].float()
        if sampling:
            nxt = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator).squeeze(1)
        else:
            nxt = scores.argmax(dim=-1)
        tokens[:, t + 1] = nxt + nspecial
    if cuda:
        torch.cuda.synchronize(device)
    times[length] = time.perf_counter() - start
    held = state if stepper is None else stepper.held_tensors()
    return tokens[:, 1:], times, span, incremental_state_bytes(held)


def describe_decoding(stepper):
    """How a TokenStepper decoded (after its first steps), for the report; "" for None (DecodingCache)."""
    if stepper is None:
        return ""
    return ", TokenStepper {}{}".format(
        stepper.mode, " (capture failed: eager ring)" if stepper.graph_failure is not None
        else " of the reference recurrence" if stepper.graph_recurrence == "reference" else "")


def run_one(model, length, args, device, stepper=None):
    generator = torch.Generator(device=device)
    generator.manual_seed(args.seed)
    with PeakMemory(device) as mem:
        tokens, times, span, state_bytes = generate(
            model, length, args.batch, device, args.sampling, generator, model.decoder.dictionary.nspecial, stepper)
    total = times[length]
    assert tokens.shape == (args.batch, length)
    record = {
        "length": length,
        "batch": args.batch,
        "seconds": total,
        "tokens_per_second": length * args.batch / total,
        "ms_per_token": 1000.0 * total / length,
        "span": span,
        "first_span_ms_per_token": 1000.0 * times[span] / span,
        "last_span_ms_per_token": 1000.0 * (times[length] - times[length - span]) / span,
        "state_mib": state_bytes / MIB,
    }
    record["last_over_first"] = record["last_span_ms_per_token"] / record["first_span_ms_per_token"]
    record.update(mem.result)
    return record


def time_sequence_generator(model, task, length, args, device):
    """fairseq's SequenceGenerator, beam 1, forced to generate exactly ``length`` tokens."""
    from fairseq.sequence_generator import SequenceGenerator

    gen = SequenceGenerator([model], task.target_dictionary, beam_size=1, max_len_a=0, max_len_b=length,
                            min_len=length, max_len=length + 2)
    eos = task.target_dictionary.eos()
    sample = {"net_input": {"src_tokens": torch.full((args.batch, 1), eos, dtype=torch.long, device=device),
                            "src_lengths": torch.ones(args.batch, dtype=torch.long, device=device)}}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    hypos = gen.generate([model], sample)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    generated = hypos[0][0]["tokens"].numel()  # includes the final </s>
    return {"length": length, "generated": generated, "seconds": seconds,
            "tokens_per_second": generated * args.batch / seconds, "ms_per_token": 1000.0 * seconds / generated}


# ----------------------------------------------------------------------------------- report


def ratio(a, b):
    if a is None or b is None or not b:
        return None
    return a / b


def summarize(results):
    """Scaling ratios per model and SRU++/Transformer ratios per length."""
    lengths = results["setup"]["lengths"]
    lo, hi = lengths[0], lengths[-1]
    peak_key = "cuda_peak_growth_mib" if results["setup"]["device"] == "cuda" else "rss_peak_growth_mib"
    scaling = {}
    for name, m in results["models"].items():
        runs = {r["length"]: r for r in m.get("runs", [])}
        if lo in runs and hi in runs:
            a, b = runs[lo], runs[hi]
            scaling[name] = {
                "from": lo, "to": hi,
                "ms_per_token": ratio(b["ms_per_token"], a["ms_per_token"]),
                "last_span_ms_per_token": ratio(b["last_span_ms_per_token"], a["last_span_ms_per_token"]),
                "state_memory": ratio(b["state_mib"], a["state_mib"]),
                "peak_memory": ratio(b.get(peak_key), a.get(peak_key)),
            }
    results["scaling"] = scaling
    versus = {}
    s_runs = {r["length"]: r for r in results["models"].get("srupp_lm", {}).get("runs", [])}
    t_runs = {r["length"]: r for r in results["models"].get("transformer_lm", {}).get("runs", [])}
    for length in lengths:
        if length in s_runs and length in t_runs:
            s, t = s_runs[length], t_runs[length]
            versus[str(length)] = {
                "tokens_per_second": ratio(s["tokens_per_second"], t["tokens_per_second"]),
                "last_span_ms_per_token": ratio(s["last_span_ms_per_token"], t["last_span_ms_per_token"]),
                "state_memory": ratio(s["state_mib"], t["state_mib"]),
                "peak_memory": ratio(s.get(peak_key), t.get(peak_key)),
            }
    results["srupp_over_transformer"] = versus
    results["peak_memory_key"] = peak_key
    return results


def _fmt(v, spec="{:.2f}"):
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else spec.format(v)


def format_report(results):
    setup = results["setup"]
    cuda = setup["device"] == "cuda"
    lines = ["Generation with incremental decoding: {device_name}, {dtype}, batch {batch}, {threads} thread(s), "
             "{decoding}; SRU++ window {window}; malloc tuned: {malloc_tuned}".format(**setup), ""]
    for name, m in results["models"].items():
        lines.append("{:<15} {:>10,} parameters  {}".format(name, m["params"], m["description"]))
    lines.append("")
    header = ["model", "tokens", "tok/s", "ms/tok", "first ms/tok", "last ms/tok", "last/first", "state MiB",
              "peak RSS +MiB"]
    if cuda:
        header += ["CUDA peak +MiB", "CUDA max MiB"]
    rows = []
    for length in setup["lengths"]:
        for name, m in results["models"].items():
            for r in m.get("runs", []):
                if r["length"] != length:
                    continue
                row = [name, "{:,}".format(length), _fmt(r["tokens_per_second"], "{:,.1f}"),
                       _fmt(r["ms_per_token"], "{:.3f}"), _fmt(r["first_span_ms_per_token"], "{:.3f}"),
                       _fmt(r["last_span_ms_per_token"], "{:.3f}"), _fmt(r["last_over_first"]),
                       _fmt(r["state_mib"], "{:.3f}"), _fmt(r["rss_peak_growth_mib"], "{:.1f}")]
                if cuda:
                    row += [_fmt(r.get("cuda_peak_growth_mib"), "{:.1f}"),
                            _fmt(r.get("cuda_max_allocated_mib"), "{:.1f}")]
                rows.append(row)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines.append("  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths))))
    for row in rows:
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
    lines.append("(first/last ms/tok: over the first/last min(1000, tokens/2) tokens of the run; state: bytes held "
                 "by the incremental state at the end; peak: growth of peak memory during the run)")
    peak_name = "CUDA peak" if cuda else "peak RSS"
    if results["scaling"]:
        lines.append("")
        for name, s in results["scaling"].items():
            lines.append("{:<15} {:,} → {:,} tokens: ms/token x{}, last-span ms/token x{}, state memory x{}, "
                         "{} x{}".format(name, s["from"], s["to"], _fmt(s["ms_per_token"]),
                                         _fmt(s["last_span_ms_per_token"]), _fmt(s["state_memory"]), peak_name,
                                         _fmt(s["peak_memory"])))
    if results["srupp_over_transformer"]:
        lines += ["", "SRU++ / Transformer:"]
        for length, v in results["srupp_over_transformer"].items():
            lines.append("  {:>7,} tokens: tokens/s x{}, last-span ms/token x{}, state memory x{}, {} x{}".format(
                int(length), _fmt(v["tokens_per_second"]), _fmt(v["last_span_ms_per_token"]),
                _fmt(v["state_memory"], "{:.3f}"), peak_name, _fmt(v["peak_memory"])))
    if results.get("sequence_generator"):
        lines += ["", "fairseq SequenceGenerator (beam 1):"]
        for name, g in results["sequence_generator"].items():
            lines.append("  {:<15} {:,} tokens: {:,.1f} tokens/s ({:.3f} ms/token)".format(
                name, g["generated"], g["tokens_per_second"], g["ms_per_token"]))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- driver


def run_benchmark(args, malloc_tuned=False, on_run=None):
    """Run the benchmark described by parsed ``args``; return the results dictionary.

    ``malloc_tuned`` only records whether the caller tuned glibc's malloc thresholds first;
    ``on_run(results so far)`` is called after each timed run (so a caller stopped midway keeps them).
    """
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    max_positions = max(args.lengths + [args.sequence_generator]) + 8
    results = {"setup": {
        "lengths": args.lengths, "device": device.type,
        "device_name": "cpu" if device.type == "cpu" else torch.cuda.get_device_name(device),
        "dtype": args.dtype, "batch": args.batch, "threads": threads, "vocab": args.vocab,
        "decoding": "sampling" if args.sampling else "greedy", "window": None, "torch": torch.__version__,
        "malloc_tuned": malloc_tuned,
    }, "models": {}}
    models = {}
    with tempfile.TemporaryDirectory(prefix="srupp_gen_") as tmp:
        write_dictionary(tmp, args.vocab)
        for name, cli in model_cli_args(args, max_positions).items():
            model, task = build_model(tmp, cli)
            model = model.to(device=device, dtype=dtype).eval()
            info = {"params": sum(p.numel() for p in model.parameters()), "args": [str(a) for a in cli]}
            stepper = None
            if name.startswith("srupp_lm"):
                cfg = model.decoder.cfg
                info["description"] = "hidden {}, proj {}, {} layers".format(
                    cfg.hidden_size, cfg.proj_size, cfg.num_layers)
                results["setup"]["window"] = getattr(cfg, "eval_window", None)
            else:
                info["description"] = "dim {}, ffn {}, {} layers, {} heads".format(*args.transformer.split(","))
            if name == "srupp_lm_stepper":
                from fairseq_srupp.models.token_stepper import TokenStepper

                # One stepper for every run: its ring and CUDA graph are made in the warm-up, not timed.
                stepper = TokenStepper(model, args.batch, mode=args.decoding)
            state = {}
            with torch.no_grad():  # warm-up: first-call allocations, lazily compiled ops, graph capture
                generate(model, min(WARMUP_TOKENS, args.lengths[0]), args.batch, device, stepper=stepper, state=state)
            # srupp_lm through fairseq's incremental state: the TokenStepper it made, if any (a new one each
            # run, capturing its graph inside the timed run, as each call of fairseq's generators does)
            held = stepper if stepper is not None else getattr(model.decoder, "_stepper", lambda s: None)(state)
            if name.startswith("srupp_lm"):
                info["description"] += (", incremental state" if stepper is None else "") + describe_decoding(held)
                info["decoding"] = {"mode": "cache"} if held is None else {
                    "mode": held.mode, "graph_failure": held.graph_failure,
                    "graph_recurrence": held.graph_recurrence, "capture_failures": held.capture_failures}
            info["runs"] = []
            models[name] = (model, task, stepper)
            results["models"][name] = info
        with torch.no_grad():
            for length in args.lengths:
                for name, (model, _, stepper) in models.items():
                    results["models"][name]["runs"].append(run_one(model, length, args, device, stepper))
                    if on_run is not None:
                        on_run(summarize(copy.deepcopy(results)))
            if args.sequence_generator:
                results["sequence_generator"] = {
                    name: time_sequence_generator(model, task, args.sequence_generator, args, device)
                    for name, (model, task, stepper) in models.items()
                    if stepper is None  # SequenceGenerator decodes through the incremental state, not a stepper
                }
    return summarize(results)


def main(argv=None, tune_malloc=None):
    """Command-line entry point; ``tune_malloc`` (a callable returning whether it applied) prepares
    glibc's allocator before anything is allocated, unless --no-malloc-tuning."""
    args = parse_args(argv)
    malloc_tuned = bool(tune_malloc()) if tune_malloc is not None and not args.no_malloc_tuning else False
    results = run_benchmark(args, malloc_tuned, on_run=(lambda part: write_json(args.json_out, part, partial=True))
                            if args.json_out else None)
    print(format_report(results), flush=True)
    if args.json_out:
        write_json(args.json_out, results)
    return 0


def write_json(path, results, partial=False):
    """``results`` to ``path`` in one rename, marked ``"partial": true`` while runs are still to come (a
    run stopped for time keeps the runs it finished, and a reader never sees half a file)."""
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(dict(results, partial=partial), indent=2) + "\n")
    os.replace(tmp, path)
