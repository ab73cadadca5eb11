"""Idempotent steps of the dataset scripts.

Each script is a short list of *steps* (download, verify, extract, tokenize, binarize). A step
records what it consumed in a stamp, ``OUT/.stamps/<step>.json``: its parameters and a fingerprint
(path, size, modification time) of every input file, plus the fingerprints of what it wrote. A rerun
skips a step whose inputs and outputs still match its stamp, and redoes it (and, through the
changed fingerprints of its outputs, every later step) when anything changed.

``OUT/.stamps/`` also marks OUT as the scripts' own: it is made before the first step writes
anything, so an interrupted first run resumes. A directory without it that already holds what a
script would write (a data-bin, ``train.tokens``, ...) is someone else's, and is refused unless
``--force``; an input among the outputs (``--text OUT/train.tokens``) is refused always.
"""
import json
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from .files import PathLike, atomic_file, clean_stale_temps, fingerprint, output_dir, remove
from .prep import PrepError, log

# Bump when a step's output for the same inputs changes, so old stamps stop matching.
STAMP_VERSION = 1


class Steps:
    """Run named steps in ``out_dir``, skipping those whose stamp matches inputs and outputs."""

    def __init__(self, out_dir: PathLike, force: bool = False, writes: Sequence[str] = (),
                 inputs: Optional[Dict[str, Path]] = None):
        """``writes``: the names under ``out_dir`` that this run's steps write; ``inputs``: the input
        files by option (``{"--text": path}``). Both are checked before anything is written."""
        self.out_dir = output_dir(out_dir)
        self.stamp_dir = self.out_dir / ".stamps"
        self.ran: List[str] = []
        self.skipped: List[str] = []
        outputs = [self.out_dir / name for name in writes]
        refuse_inputs_among_outputs(inputs or {}, outputs, self.out_dir)
        if not force:
            refuse_foreign_outputs(self.out_dir, self.stamp_dir, outputs)
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
        self.stamp_dir.mkdir(parents=True, exist_ok=True)  # OUT is ours from now on, even if interrupted
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


def _is_within(path: Path, target: Path) -> bool:
    path, target = path.resolve(), target.resolve()
    return path == target or target in path.parents


def refuse_inputs_among_outputs(inputs: Dict[str, Path], outputs: Sequence[Path], out_dir: Path) -> None:
    """An input file that a step would replace (e.g. ``--text OUT/train.tokens``) would be lost."""
    for option, path in inputs.items():
        hit = next((out for out in outputs if _is_within(Path(path), out)), None)
        if hit is not None:
            raise PrepError("{} {} is among the outputs this script writes into --out {} ({}): it would be "
                            "overwritten; move it out of {} or give another --out".format(
                                option, path, out_dir, hit.name, out_dir))


def refuse_foreign_outputs(out_dir: Path, stamp_dir: Path, outputs: Sequence[Path]) -> None:
    """Outputs already in ``out_dir`` that no script made (no ``stamp_dir``) are not replaced silently."""
    if stamp_dir.is_dir():
        return
    present = [out.name for out in outputs if out.exists() or out.is_symlink()]
    if present:
        raise PrepError("--out {} already holds {}, which this script did not make (there is no {}): give "
                        "another --out, or pass --force to replace them".format(
                            out_dir, ", ".join(present), stamp_dir))


def _normalize(value):
    return json.loads(json.dumps(value, sort_keys=True))
