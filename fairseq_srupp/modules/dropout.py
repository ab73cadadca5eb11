"""Dropout that fairseq's ``--retain-dropout`` can keep on at inference (Monte-Carlo dropout).

fairseq's own models use ``fairseq.modules.FairseqDropout``: ``prepare_for_inference_`` calls each
module's ``make_generation_fast_(name, retain_dropout=..., retain_dropout_modules=...)``, which
sets ``apply_during_inference``. A plain ``nn.Dropout`` has no such hook, so the flag did nothing.
This class follows the same protocol without importing fairseq, so the modules stay usable alone.
"""
import logging
from typing import List, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from fairseq_srupp.ops.dropout import dropout

logger = logging.getLogger(__name__)


class Dropout(nn.Dropout):
    """``nn.Dropout`` that can stay active in eval mode.

    Args:
        p: drop probability.
        module_name: the class name of the owning module; ``--retain-dropout-modules`` selects
            dropouts by it (e.g. ``SRUppAttention SRUppLayer``), as fairseq's transformer does.

    In training it calls :func:`fairseq_srupp.ops.dropout.dropout`: fused on the CPU, ``F.dropout``
    elsewhere; ``FAIRSEQ_SRUPP_DROPOUT=torch`` gives ``F.dropout`` everywhere, i.e. the random draws
    of ``nn.Dropout``, so seeded runs match ``sru.SRUpp``. In eval mode it drops only when
    ``apply_during_inference`` is set.
    """

    def __init__(self, p: float = 0.0, module_name: Optional[str] = None):
        super().__init__(p)
        self.module_name = module_name
        self.apply_during_inference = False

    @property
    def active(self) -> bool:
        """Whether this dropout draws masks now (training, or retained at inference)."""
        return self.training or self.apply_during_inference

    def forward(self, input: Tensor) -> Tensor:
        """input (any shape) → same shape."""
        if self.inplace:
            return F.dropout(input, self.p, self.active, inplace=True)
        return dropout(input, self.p, self.active)

    def make_generation_fast_(
        self,
        name: str = "",
        retain_dropout: bool = False,
        retain_dropout_modules: Optional[List[str]] = None,
        **kwargs
    ):
        """fairseq's hook (``BaseFairseqModel.prepare_for_inference_`` calls it on every submodule)."""
        if not retain_dropout:
            return
        if retain_dropout_modules is None or self.module_name in retain_dropout_modules:
            logger.info("keeping dropout on at inference for %s", name)
            self.apply_during_inference = True

    def extra_repr(self) -> str:
        return "p={}{}".format(self.p, ", retained at inference" if self.apply_during_inference else "")
