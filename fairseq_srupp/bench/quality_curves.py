"""Reading fairseq-train's log while it runs, and comparing validation-loss curves."""
import math
import re
import time
from typing import Dict, List, Optional

VALID = re.compile(r"\| valid \|.*\| loss ([0-9.]+) \|.*\| num_updates (\d+)")
BEGIN_VALID = re.compile(r"begin validation on")
START_TRAINING = re.compile(r"Start iterating over samples")
PARAMS = re.compile(r"num\. shared model params: ([0-9,]+)")


class CurveRecorder:
    """Fed fairseq-train's output line by line; timestamps every validation result.

    ``seconds`` of a point is training wall-clock time: time since fairseq started iterating over
    training samples, minus the time spent in validation runs before it (not training compute).
    """

    def __init__(self, tokens_per_update: int, flops_per_token: float):
        self.tokens_per_update = tokens_per_update
        self.flops_per_token = flops_per_token
        self.start = time.perf_counter()
        self._started_training = False
        self.validation_seconds = 0.0
        self._valid_started: Optional[float] = None
        self.points: List[Dict[str, float]] = []
        self.params: Optional[int] = None

    def feed(self, line: str) -> None:
        now = time.perf_counter()
        if START_TRAINING.search(line) and not self._started_training:
            self._started_training = True
            self.start = now
        if BEGIN_VALID.search(line):
            self._valid_started = now
        match = VALID.search(line)
        if match:
            if self._valid_started is not None:
                self.validation_seconds += now - self._valid_started
                self._valid_started = None
            updates = int(match.group(2))
            tokens = updates * self.tokens_per_update
            self.points.append({
                "updates": updates,
                "seconds": now - self.start - self.validation_seconds,
                "tokens": tokens,
                "flops": tokens * self.flops_per_token,
                "loss": float(match.group(1)),
            })
        params = PARAMS.search(line)
        if params:
            self.params = int(params.group(1).replace(",", ""))


def first_reaching(points: List[Dict[str, float]], target: float, axis: str) -> Optional[float]:
    """Smallest ``axis`` value at which the curve reaches ``target`` loss, interpolating linearly
    between validation points; None if it never does."""
    previous = None
    for point in points:
        if point["loss"] <= target:
            if previous is None or previous["loss"] == point["loss"]:
                return point[axis]
            frac = (previous["loss"] - target) / (previous["loss"] - point["loss"])
            return previous[axis] + frac * (point[axis] - previous[axis])
        previous = point
    return None


def compute_ratio(srupp: List[Dict[str, float]], transformer_runs: List[List[Dict[str, float]]],
                  axis: str) -> Dict[str, object]:
    """How much of ``axis`` the Transformer needs to reach SRU++'s final loss, relative to SRU++.

    ``transformer_runs`` are curves of the same training (same seed and a schedule that does not
    depend on the run length) stopped at different budgets; the earliest crossing counts.
    ``ratio`` is exact when some run gets there; otherwise ``lower_bound`` holds the most any run
    used without getting there (so the true ratio is larger)."""
    target = srupp[-1]["loss"]
    srupp_cost = first_reaching(srupp, target, axis)
    crossings = [c for c in (first_reaching(run, target, axis) for run in transformer_runs) if c is not None]
    if crossings:
        return {"target_loss": target, "ratio": min(crossings) / srupp_cost, "lower_bound": None}
    spent = max(run[-1][axis] for run in transformer_runs)
    return {"target_loss": target, "ratio": None, "lower_bound": spent / srupp_cost}


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
