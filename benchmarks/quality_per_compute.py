"""Quality per compute: srupp_lm vs fairseq's transformer_lm. See fairseq_srupp/bench/quality.py.

    .venv/bin/python benchmarks/quality_per_compute.py --data ../shared/data/tinyshakespeare.txt --seconds 300
"""
import sys

from fairseq_srupp.bench.quality import main

if __name__ == "__main__":
    sys.exit(main())
