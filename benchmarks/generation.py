"""Generation speed and memory: srupp_lm vs transformer_lm with incremental decoding.
See fairseq_srupp/bench/generation.py.

    .venv/bin/python benchmarks/generation.py --lengths 1000,4000,16000 --device cpu --json generation.json

glibc's malloc thresholds are tuned first (see bench_timing.tune_malloc; --no-malloc-tuning keeps the
defaults): otherwise the multi-MB key/value cache the Transformer reallocates at every token (SRU++'s
only while its window fills, doubling) may be served by fresh mmaps, and page faults then dominate
the time per token on some machines.
"""
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
logging.basicConfig(level=logging.WARNING)  # before fairseq's imports, which log at INFO

from bench_timing import tune_malloc  # noqa: E402
from fairseq_srupp.bench.generation import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(tune_malloc=tune_malloc))
