"""``--optimizer radam``: RAdam with decoupled weight decay, as used by the paper.

The update is torch's ``torch.optim.RAdam(decoupled_weight_decay=True)``: p ← p·(1 − lr·wd), then
the rectified Adam step when the variance estimate is tractable (ρ_t > 5) and a bias-corrected
momentum (SGD-like) step before that — the behaviour of the paper's ``radam.RAdam`` with
``degenerated_to_sgd=True``. The rectified steps run as PyTorch's fused AdamW kernel with rescaled
hyper-parameters (:class:`~fairseq_srupp.optim.fused_radam.FusedRAdam`, the same step up to
rounding, one pass over memory instead of about ten); ``--radam-unfused`` keeps torch's own passes.
"""
from dataclasses import dataclass, field
from typing import Any, List

import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II

from .config_values import check_non_negative, first_value, parse_betas
from .fused_radam import FusedRAdam


@dataclass
class FairseqRAdamConfig(FairseqDataclass):
    radam_betas: Any = field(default=(0.9, 0.999), metadata={"help": "betas for RAdam"})
    radam_eps: float = field(default=1e-8, metadata={"help": "epsilon for RAdam"})
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled weight decay (paper: 0.1)"})
    radam_unfused: bool = field(default=False, metadata={
        "help": "step with torch.optim.RAdam's own passes over memory instead of the fused AdamW kernel with "
                "rescaled hyper-parameters (the same update up to rounding)"})
    lr: List[float] = II("optimization.lr")


@register_optimizer("radam", dataclass=FairseqRAdamConfig)
class FairseqRAdam(FairseqOptimizer):
    def __init__(self, cfg: FairseqRAdamConfig, params):
        super().__init__(cfg)
        if getattr(cfg, "radam_unfused", False):
            self._optimizer = torch.optim.RAdam(params, decoupled_weight_decay=True, **self.optimizer_config)
        else:
            self._optimizer = FusedRAdam(params, **self.optimizer_config)

    @property
    def optimizer_config(self):
        config = {
            "lr": first_value(self.cfg.lr),
            "betas": parse_betas(self.cfg.radam_betas),
            "eps": self.cfg.radam_eps,
            "weight_decay": self.cfg.weight_decay,
        }
        for flag, key in (("--lr", "lr"), ("--radam-eps", "eps"), ("--weight-decay", "weight_decay")):
            check_non_negative(flag, config[key])
        return config

    @property
    def supports_flat_params(self):
        return True
