"""One RAdam step: ``--optimizer radam``'s FusedRAdam against torch.optim.RAdam, side by side.

    .venv/bin/python benchmarks/radam_step.py                       # CPU, 10M parameters
    python benchmarks/radam_step.py --device cuda --params 107650000  # enwik8-base's flat fp32 copy

The parameters are one flat fp32 tensor, as fairseq's ``--fp16`` / ``--bf16`` optimizer holds them
(``supports_flat_params``), and both optimizers are past their first steps (ρ_t > 5, where
FusedRAdam's fused kernel runs). Prints ms per step of each (median), the GB/s FusedRAdam reaches
if it reads p, g, m, v and writes p, m, v once (28 bytes per parameter), and torch's time over
FusedRAdam's; the results of the two agree to rounding (``tests/test_optim.py``).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_timing import Timer, default_threads  # noqa: E402

from fairseq_srupp.cli_args import positive_int  # noqa: E402
from fairseq_srupp.optim.fused_radam import FusedRAdam  # noqa: E402

BYTES_PER_PARAM = 28  # fp32 p, g, m, v read; p, m, v written


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--params", type=positive_int, default=10_000_000, help="parameters in the flat tensor")
    p.add_argument("--repeats", type=positive_int, default=20)
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: all usable)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    torch.set_num_threads(args.threads or default_threads())
    device = torch.device(args.device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    timer = Timer()
    rows = {}
    for name, make in (("torch.optim.RAdam", lambda ps: torch.optim.RAdam(
            ps, lr=3e-4, weight_decay=0.1, decoupled_weight_decay=True)),
            ("FusedRAdam", lambda ps: FusedRAdam(ps, lr=3e-4, weight_decay=0.1))):
        torch.manual_seed(0)
        param = torch.nn.Parameter(torch.randn(args.params, device=device))
        param.grad = torch.randn_like(param) * 1e-3
        optimizer = make([param])
        for _ in range(8):  # past the SGD-like first steps
            optimizer.step()

        def step():
            optimizer.step()
            sync()

        median, best = timer.time_fn(step, warmup=2, repeats=args.repeats)
        rows[name] = (median, best)
        del optimizer, param
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu, {} threads".format(
        torch.get_num_threads())
    print("RAdam step over {:,} fp32 parameters on {} (torch {})".format(args.params, name, torch.__version__))
    for label, (median, best) in rows.items():
        print("  {:<18} {:8.3f} ms (min {:.3f})  {:7.1f} GB/s at 28 bytes/parameter".format(
            label, 1e3 * median, 1e3 * best, BYTES_PER_PARAM * args.params / median / 1e9))
    ratio = rows["torch.optim.RAdam"][0] / rows["FusedRAdam"][0]
    print("torch.optim.RAdam / FusedRAdam time: {:.2f}x".format(ratio))
    for note in timer.notes([(k, m, b) for k, (m, b) in rows.items()]):
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
