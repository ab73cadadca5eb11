"""How far ahead the CUDA recurrence's loads really are, read off the compiled SASS (no GPU needed).

Each thread of ``recurrence_cuda.cu`` keeps the loads of the next SRUPP_PREFETCH time steps in flight so
that a step never waits for memory. Whether it does depends on the compiler: a use of a loaded register
(a conversion, a copy into the ring's slot) placed soon after the load makes the thread wait there for
the whole memory round trip. This script compiles every entry point for sm_90 at each depth, finds each
function's main loop (its longest backward branch) and, for every load in it, the distance to the first
instruction that reads or overwrites the loaded register, wrapping around the back edge, in time steps of
that loop. The steps in the loop are counted by its stores: 2 per forward step (h, c), 4 per backward step
(grad_U and grad_x, or grad_U's 4 for k=4); a loop without stores counts as one group of SRUPP_PREFETCH
steps. A cover under 1 step means that step waits for its own loads.

    python benchmarks/gpu/sass_prefetch.py --prefetch 1,4,8 [--cuda-bin DIR]

Needs nvcc and cuobjdump (with nvdisasm beside it) of CUDA 12 or 13: PyPI has them, see
benchmarks/gpu/README.md ("The kernel's SASS, on the CPU").
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from fairseq_srupp.ops.recurrence.cupy_kernel import DEFAULT_L2_AHEAD  # noqa: E402
SOURCE = REPO / "fairseq_srupp" / "ops" / "recurrence" / "recurrence_cuda.cu"
INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
LOAD = re.compile(r"^(?:@!?U?P\w+\s+)?LDG\.E(\.\S+)?\s+(R\d+)")
BRANCH = re.compile(r"\bBRA\s+(0x[0-9a-f]+)")
REGISTER = re.compile(r"\bR\d+\b")
STORE = re.compile(r"^(?:@!?U?P\w+\s+)?STG\b")
STORES_PER_STEP = {"forward": 2, "backward": 4}


def functions(sass):
    """{name: [(address, instruction text)]} of a ``cuobjdump -sass`` listing."""
    out = {}
    for part in re.split(r"\n\s*Function : ", sass)[1:]:
        name, body = part.split("\n", 1)
        out[name.strip()] = [(int(m.group(1), 16), m.group(2)) for m in INSTRUCTION.finditer(body)]
    return out


def main_loop(instructions):
    """The instructions of the longest loop (from a backward branch's target to the branch), or None."""
    index = {address: i for i, (address, _) in enumerate(instructions)}
    best = None
    for i, (address, text) in enumerate(instructions):
        m = BRANCH.search(text)
        if m and int(m.group(1), 16) < address and int(m.group(1), 16) in index:
            start = index[int(m.group(1), 16)]
            if best is None or i - start > best[1] - best[0]:
                best = (start, i)
    return None if best is None else instructions[best[0]:best[1] + 1]


def load_cover(loop, steps_per_iteration):
    """For each load in ``loop``: instructions to the first one that touches its destination register
    (wrapping around the back edge), in time steps (``len(loop) / steps_per_iteration`` each)."""
    per_step = len(loop) / steps_per_iteration
    covers = []
    for i, (_, text) in enumerate(loop):
        m = LOAD.match(text)
        if not m:
            continue
        width = 2 if (m.group(1) or "").endswith(".64") else 4 if (m.group(1) or "").endswith(".128") else 1
        first = int(m.group(2)[1:])
        registers = {"R{}".format(first + k) for k in range(width)}
        for distance in range(1, len(loop) + 1):
            if registers & set(REGISTER.findall(loop[(i + distance) % len(loop)][1])):
                covers.append(distance / per_step)
                break
    return covers


def steps_in_loop(name, loop, prefetch):
    """Time steps one pass of an entry point's main loop walks: its stores over a step's, else ``prefetch``."""
    direction = next((d for d in STORES_PER_STEP if d in name), None)
    stores = sum(bool(STORE.match(text)) for _, text in loop)
    return stores / STORES_PER_STEP[direction] if direction and stores else prefetch


def summarise(sass, prefetch):
    """Per entry point: loop length, instructions per step, loads, and their cover in steps."""
    rows = []
    for name, instructions in functions(sass).items():
        loop = main_loop(instructions)
        steps = steps_in_loop(name, loop, prefetch) if loop else None
        covers = load_cover(loop, steps) if loop else []
        rows.append({"function": name, "prefetch": prefetch, "loop_instructions": len(loop or []),
                     "loop_steps": steps, "instructions_per_step": len(loop) / steps if loop else None,
                     "loads": len(covers),
                     "min_cover_steps": min(covers) if covers else None,
                     "median_cover_steps": statistics.median(covers) if covers else None,
                     "loads_under_one_step": sum(c < 1 for c in covers)})
    return rows


def compile_sass(prefetch, cuda_bin, l2, arch="sm_90"):
    env = dict(os.environ, PATH="{}:{}".format(cuda_bin, os.environ.get("PATH", ""))) if cuda_bin else None
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "recurrence.cubin"
        subprocess.run(["nvcc", "-arch=" + arch, "-std=c++17", "-O3", "-DSRUPP_PREFETCH={}".format(prefetch),
                        "-DSRUPP_L2_AHEAD={}".format(l2), "-DSRUPP_STAGE_STEPS=0", "-I", str(SOURCE.parent), "-cubin", "-o", str(cubin), str(SOURCE)], check=True, env=env)
        return subprocess.run(["cuobjdump", "-sass", str(cubin)], check=True, env=env, capture_output=True,
                              text=True).stdout


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prefetch", default="4", help="comma-separated depths (default 4)")
    p.add_argument("--l2-ahead", type=int, default=DEFAULT_L2_AHEAD,
                   help="time steps ahead the kernels ask L2 for (default {}; 0: none)".format(DEFAULT_L2_AHEAD))
    p.add_argument("--cuda-bin", default=None, help="folder with nvcc, cuobjdump and nvdisasm (default: PATH)")
    p.add_argument("--json", dest="json_out")
    args = p.parse_args(argv)
    try:
        args.prefetch = [int(v) for v in args.prefetch.split(",")]
    except ValueError:
        p.error("--prefetch takes comma-separated integers from 1 to 16, got {!r}".format(args.prefetch))
    if not all(1 <= v <= 16 for v in args.prefetch):
        p.error("--prefetch takes depths from 1 to 16, got {}".format(args.prefetch))
    if not 0 <= args.l2_ahead <= 256:
        p.error("--l2-ahead takes 0 to 256 time steps, got {}".format(args.l2_ahead))
    tools = ("nvcc", "cuobjdump", "nvdisasm")
    search = "{}:{}".format(args.cuda_bin, os.environ.get("PATH", "")) if args.cuda_bin else None
    missing = [t for t in tools if shutil.which(t, path=search) is None]
    if missing:
        p.error("{} not found{}: give --cuda-bin (see benchmarks/gpu/README.md)".format(
            ", ".join(missing), " in " + args.cuda_bin if args.cuda_bin else " on PATH"))
    return args


def main(argv=None):
    args = parse_args(argv)
    rows = []
    for prefetch in args.prefetch:
        rows += summarise(compile_sass(prefetch, args.cuda_bin, args.l2_ahead), prefetch)
    print("| entry point | P | steps per loop | instructions / step | loads | cover (steps): min | median | "
          "loads under 1 step |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print("| {function} | {prefetch} | {loop_steps:g} | {instructions_per_step:.0f} | {loads} | {min_cover_steps:.2f} | "
              "{median_cover_steps:.2f} | {loads_under_one_step} |".format(**r))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
