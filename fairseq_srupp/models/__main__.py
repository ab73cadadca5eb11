"""``python -m fairseq_srupp.models [--check]``: rewrite (or check) what is derived from the preset
table, the ``model:`` sections of configs/*.yaml and README's preset table (see presets.py)."""
import sys

from .presets import main

sys.exit(main())
