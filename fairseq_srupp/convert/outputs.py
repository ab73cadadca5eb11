"""Where the converters write: never over one of their inputs, never silently over a different file,
never half a file.

Every output is first written complete under a hidden temporary name in its own folder
(:class:`StagedOutputs`). Only when all of a conversion's outputs are written are they compared with
what their final names already hold: no file there, or the very same bytes (a re-run), and they are
renamed into place with ``os.replace`` (atomic on one file system); different bytes are refused
unless the caller allows overwriting (``--force``). All outputs are checked before any is renamed,
so a refusal or an error leaves every existing file as it was, and an interrupted conversion leaves
no truncated file under a final name.
"""
import filecmp
import glob
import os
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Tuple, Union

from fairseq_srupp.errors import SRUppUserError

PathLike = Union[str, Path]
TEMP_MARK = ".converting-"


def temp_name(final: Path) -> Path:
    """The hidden name ``final`` is written under until it is complete (per process)."""
    return final.with_name(".{}{}{}".format(final.name, TEMP_MARK, os.getpid()))


def remove_stale_temps(final: Path) -> None:
    """Remove what a killed earlier conversion to ``final`` left (its temporary files)."""
    for stale in final.parent.glob(".{}{}*".format(glob.escape(final.name), TEMP_MARK)):
        if stale.is_file():
            stale.unlink()


def check_not_an_input(outputs: Sequence[Tuple[Path, str]], inputs: Mapping[str, Optional[PathLike]],
                       option: str) -> None:
    """Refuse, before any work, an output that is one of the inputs (even with --force: the input
    would be lost). ``outputs``: (path, how the user named it); ``inputs``: flag → path or None."""
    for output, named in outputs:
        if not output.exists():
            continue
        for flag, given in inputs.items():
            if given is not None and Path(given).exists() and os.path.samefile(output, given):
                raise SRUppUserError("{} is the {} file {} itself: the conversion would overwrite its own input; "
                                     "give another {}".format(named, flag, given, option))


def same_bytes(a: Path, b: Path) -> bool:
    return filecmp.cmp(str(a), str(b), shallow=False)


def flush_to_disk(path: Path) -> None:
    # So that after a crash the renamed file is the complete one, not an empty inode.
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StagedOutputs:
    """Outputs written under temporary names, published all together or not at all.

    ``option`` is the flag that chose where they go (for the messages); ``overwrite`` allows
    replacing existing files that differ. Use as a context manager: :meth:`stage` gives the path
    to write each output to; leaving the block normally publishes them, leaving it by an exception
    removes them.
    """

    def __init__(self, option: str, overwrite: bool = False):
        self.option = option
        self.overwrite = overwrite
        self.staged: List[Tuple[Path, Path]] = []  # (temporary, final)

    def stage(self, final: PathLike) -> Path:
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(final)
        temp = temp_name(final)
        self.staged.append((temp, final))
        return temp

    def conflict(self, temp: Path, final: Path) -> Optional[str]:
        """Why ``temp`` may not replace ``final`` (None: it may)."""
        if final.is_dir():
            return "{} is a directory: give another {}".format(final, self.option)
        if not final.exists() or self.overwrite or same_bytes(temp, final):
            return None
        return ("{} already exists and differs from what the conversion writes: nothing was written; give a new {} "
                "(or pass --force to replace it)".format(final, self.option))

    def publish(self) -> None:
        for temp, final in self.staged:
            why = self.conflict(temp, final)
            if why is not None:
                raise SRUppUserError(why)
        for temp, final in self.staged:
            flush_to_disk(temp)
            os.replace(str(temp), str(final))

    def discard(self) -> None:
        for temp, _ in self.staged:
            if temp.exists():
                temp.unlink()

    def __enter__(self) -> "StagedOutputs":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.publish()
        finally:
            self.discard()
