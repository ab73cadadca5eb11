"""Quality per compute at each model's best learning rate. See fairseq_srupp/bench/quality_sweep.py.

    .venv/bin/python benchmarks/quality_lr_sweep.py --data ../shared/data/tinyshakespeare.txt --flops 2.8e13
"""
import sys

from fairseq_srupp.bench.quality_sweep import main

if __name__ == "__main__":
    sys.exit(main())
