"""User-facing errors: one clear line on the terminal instead of a traceback.

Raise :class:`SRUppUserError` (a ``ValueError``) for anything a user can fix — bad data, a wrong flag,
a mismatched checkpoint. :func:`install_excepthook` (called when the plugin is imported) prints such an
error as ``error: <message>`` and exits with status 1; set ``FAIRSEQ_SRUPP_DEBUG=1`` to get the full
traceback back. Other exceptions keep Python's normal report.
"""
import os
import stat
import sys


def env_choice(name: str, choices) -> str:
    """The value of the environment switch ``name``: one of ``choices``, the first when unset or
    empty; anything else is an :class:`SRUppUserError` naming the choices."""
    value = os.environ.get(name, "") or choices[0]
    if value not in choices:
        raise SRUppUserError("{}={!r} is not one of {}: unset it or set it to one of them".format(
            name, value, ", ".join(choices)))
    return value


def env_int(name: str, default: int, low: int, high: int, wants: str, low_means: str = "") -> int:
    """The integer value of the environment switch ``name``, ``default`` when unset or empty; anything
    else outside ``low``..``high`` is an :class:`SRUppUserError` asking for ``wants`` (``low_means``: what
    ``low`` stands for, named in the message)."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or not low <= int(value) <= high:
        raise SRUppUserError("{}={!r}: give {}, an integer from {}{} to {} (default {})".format(
            name, value, wants, low, " ({})".format(low_means) if low_means else "", high, default))
    return int(value)


def not_a_file(path) -> str:
    """Why ``path`` (known not to be a readable file) is not one, for an error message."""
    if os.path.isdir(path):
        return "is a directory"
    if os.path.exists(path):
        return "is not a regular file ({})".format(special_file_kind(path))
    return "does not exist"


def special_file_kind(path) -> str:
    """What an existing path that is neither a regular file nor a directory is, for a message."""
    mode = os.stat(path).st_mode
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "a special file"


class SRUppUserError(ValueError):
    """An error the user can act on; its message is the whole report."""


class CheckpointMismatchError(SRUppUserError):
    """A checkpoint's parameters do not fit the model built to load them (callers that know why, e.g.
    a ``--model-overrides`` of a size, reword it)."""


def find_user_error(exc):
    """The :class:`SRUppUserError` that ``exc`` is, or was raised from or while handling; else None."""
    # fairseq's distributed wrappers may re-raise with a cause chain; look through it.
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, SRUppUserError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


_installed = False
# Callables (exception -> SRUppUserError or None) that recognise a traceback a user caused somewhere the plugin
# cannot check first (e.g. while fairseq parses the command line, before any of the plugin's checks run).
_recognisers = []


def recognise_user_error(recogniser) -> None:
    """Have the excepthook print ``recogniser(exc)``, where it returns an error, as one line instead of ``exc``."""
    if recogniser not in _recognisers:
        _recognisers.append(recogniser)


def _user_error(exc):
    error = find_user_error(exc)
    for recognise in _recognisers if error is None else ():
        try:
            error = recognise(exc)
        except Exception:  # a recogniser must never hide the real traceback
            error = None
        if error is not None:
            break
    return error


def install_excepthook() -> None:
    """Print uncaught :class:`SRUppUserError` (or a recognised user error) as one line (idempotent)."""
    global _installed
    if _installed:
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        error = _user_error(exc)
        if error is not None and os.environ.get("FAIRSEQ_SRUPP_DEBUG", "") in ("", "0"):
            sys.stderr.write("error: {}\n".format(error))
            sys.stderr.flush()
            return
        previous(exc_type, exc, tb)

    sys.excepthook = hook
    _installed = True
