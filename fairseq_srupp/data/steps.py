"""Idempotent steps of the dataset scripts.

Each script is a short list of *steps* (download, verify, extract, tokenize, binarize). A step
records what it consumed in a stamp, ``OUT/.stamps/<step>.json``: its parameters and a fingerprint
(path, size, modification time) of every input file, plus the fingerprints of what it wrote. A rerun
skips a step whose inputs and outputs still match its stamp, and redoes it (and, through the
changed fingerprints of its outputs, every later step) when anything changed.
"""
import json
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence

from .files import PathLike, atomic_file, clean_stale_temps, fingerprint, remove
from .prep import log

# Bump when a step's output for the same inputs changes, so old stamps stop matching.
STAMP_VERSION = 1


class Steps:
    """Run named steps in ``out_dir``, skipping those whose stamp matches inputs and outputs."""

    def __init__(self, out_dir: PathLike, force: bool = False):
        self.out_dir = Path(out_dir)
        self.stamp_dir = self.out_dir / ".stamps"
        self.ran: List[str] = []
        self.skipped: List[str] = []
        clean_stale_temps(self.out_dir)
        if force and self.stamp_dir.is_dir():
            log("--force: forgetting the finished steps recorded in {}".format(self.stamp_dir))
            remove(self.stamp_dir)

    def stamp_path(self, name: str) -> Path:
        return self.stamp_dir / "{}.json".format(name)

    def _outputs(self, outputs: Sequence[Path]) -> Dict[str, object]:
        return {str(Path(p)): fingerprint(p) for p in outputs}

    def is_done(self, name: str, inputs: Dict[str, object], outputs: Sequence[Path]) -> bool:
        stamp = self.stamp_path(name)
        if not stamp.is_file():
            return False
        try:
            recorded = json.loads(stamp.read_text())
        except ValueError:
            return False
        if recorded.get("version") != STAMP_VERSION or recorded.get("inputs") != _normalize(inputs):
            return False
        if not all(Path(p).exists() for p in outputs):
            return False
        return recorded.get("outputs") == _normalize(self._outputs(outputs))

    def run(self, name: str, inputs: Dict[str, object], outputs: Sequence[PathLike],
            action: Callable[[], None]) -> bool:
        """Run ``action`` unless step ``name`` already ran with these inputs; return whether it ran.

        ``outputs`` are the files or directories the action writes (each atomically); the step
        counts as done only while all of them exist unchanged.
        """
        outputs = [Path(p) for p in outputs]
        if self.is_done(name, inputs, outputs):
            log("skipping {}: already done with the same inputs (stamp {})".format(name, self.stamp_path(name)))
            self.skipped.append(name)
            return False
        stamp = self.stamp_path(name)
        if stamp.exists():
            stamp.unlink()  # the old outputs no longer count as done, whatever happens next
        log("running {}".format(name))
        started = time.time()
        action()
        missing = [str(p) for p in outputs if not p.exists()]
        if missing:
            raise RuntimeError("step {} did not write {}".format(name, ", ".join(missing)))
        record = {"version": STAMP_VERSION, "step": name, "inputs": _normalize(inputs),
                  "outputs": _normalize(self._outputs(outputs)), "seconds": round(time.time() - started, 3)}
        with atomic_file(stamp, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
        self.ran.append(name)
        return True


def _normalize(value):
    return json.loads(json.dumps(value, sort_keys=True))
