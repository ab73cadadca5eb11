"""``--lr-scheduler srupp_cosine``: the paper's schedule, update for update.

The paper's scripts set lr·(n+1)/W for the first W updates, and step a
``CosineAnnealingLR(T_max=max_update)`` after every update from the very first one; since the
warm-up overwrites the rate, the cosine continues from the warm-up's end value. Unrolled, the rate
used by update n (0-based) is::

    n <  W:  lr · (n + 1) / W
    n >= W:  lr · (1 + cos(π n / T)) / (1 + cos(π (W − 1) / T))      (0 at n = T)

fairseq's own ``cosine`` scheduler instead restarts the cosine after warm-up over T − W updates
and starts warm-up at 0; the two differ by up to ~6% of lr mid-run for the paper's W=16k, T=400k.
"""
import math
from dataclasses import dataclass, field
from typing import List

from fairseq.dataclass import FairseqDataclass
from fairseq.optim.lr_scheduler import FairseqLRScheduler, register_lr_scheduler
from omegaconf import II

from fairseq_srupp.errors import SRUppUserError

from .config_values import first_value


def paper_learning_rate(update: int, peak_lr: float, warmup_updates: int, max_update: int) -> float:
    """Rate of (0-based) update ``update`` in the paper's warm-up + cosine schedule."""
    if update < warmup_updates:
        return peak_lr * (update + 1) / warmup_updates
    update = min(update, max_update)
    start = math.cos(math.pi * max(warmup_updates - 1, 0) / max_update)
    return peak_lr * (1 + math.cos(math.pi * update / max_update)) / (1 + start)


@dataclass
class SRUppCosineConfig(FairseqDataclass):
    warmup_updates: int = field(default=16000, metadata={"help": "linear warm-up updates (paper: 16000)"})
    lr: List[float] = II("optimization.lr")
    max_update: int = II("optimization.max_update")


@register_lr_scheduler("srupp_cosine", dataclass=SRUppCosineConfig)
class SRUppCosineSchedule(FairseqLRScheduler):
    def __init__(self, cfg: SRUppCosineConfig, optimizer):
        super().__init__(cfg, optimizer)
        if cfg.max_update <= 0:
            raise SRUppUserError("--lr-scheduler srupp_cosine needs --max-update (the cosine reaches 0 there)")
        if cfg.warmup_updates < 0 or cfg.warmup_updates >= cfg.max_update:
            raise SRUppUserError(
                "--warmup-updates {} must be in [0, --max-update {})".format(cfg.warmup_updates, cfg.max_update))
        self.peak_lr = first_value(cfg.lr)
        self.step_update(0)

    def step(self, epoch, val_loss=None):
        super().step(epoch, val_loss)
        return self.optimizer.get_lr()

    def step_update(self, num_updates):
        """Set the rate of the next update, which is update number ``num_updates`` (0-based)."""
        lr = paper_learning_rate(num_updates, self.peak_lr, self.cfg.warmup_updates, self.cfg.max_update)
        self.optimizer.set_lr(lr)
        return lr
