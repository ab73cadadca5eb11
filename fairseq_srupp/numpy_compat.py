"""Let fairseq 0.12's ``np.compat.long`` run under NumPy 2.

NumPy 2 removed ``numpy.compat``; fairseq still reads ``np.compat.long`` when it builds
``TokenBlockDataset(break_mode="eos")`` (``fairseq-interactive`` / the hub / ``fairseq-eval-lm
--sample-break-mode eos`` with ``--task language_modeling``) and in ``LanguagePairDataset``. We add
exactly that name, and only when NumPy lacks it.
"""
import types

import numpy as np


def install() -> None:
    try:
        np.compat  # noqa: B018  (NumPy < 2 has it)
    except AttributeError:
        np.compat = types.SimpleNamespace(long=np.int64)
