"""Generation speed and memory: srupp_lm vs transformer_lm with incremental decoding.
See fairseq_srupp/bench/generation.py.

    .venv/bin/python benchmarks/generation.py --lengths 1000,4000,16000 --device cpu --json generation.json
"""
import sys

from fairseq_srupp.bench.generation import main

if __name__ == "__main__":
    sys.exit(main())
