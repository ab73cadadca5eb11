"""How the dataset scripts in ``data_scripts/`` talk to the user and end.

User errors (missing or damaged archive, missing member, empty split, wrong size, no network)
raise :class:`PrepError`; :func:`cli` prints them as one ``error: ...`` line and exits with 2.
Ctrl-C and SIGTERM end a script the same way: its temporary files are removed as the stack unwinds,
its worker processes are stopped, finished steps are kept, and one line says to rerun.
"""
import gc
import multiprocessing
import multiprocessing.pool
import os
import signal
import sys
import threading
from typing import Callable

from fairseq_srupp.errors import SRUppUserError

SPLITS = ("train", "valid", "test")


class PrepError(SRUppUserError):
    """A problem the user can fix; its message is one line saying what is wrong and what to do."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that ``finally`` blocks remove temporaries as for Ctrl-C.

    A BaseException like KeyboardInterrupt: ``except Exception`` handlers must not swallow it.
    """


def log(message: str) -> None:
    print(message, flush=True)


def count(n: int) -> str:
    return "{:,}".format(n)


def _stop_workers() -> None:
    """Stop the worker processes of this script (fairseq-preprocess's pool) before unwinding.

    A pool replaces a worker that dies while it still has work queued, so the pool itself is
    terminated; only then are the temporaries its workers write into removed. fairseq owns the
    pool object, hence the search through the garbage collector's objects.
    """
    for obj in gc.get_objects():
        if isinstance(obj, multiprocessing.pool.Pool):
            obj.terminate()
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    for child in children:
        child.join(timeout=10)


def cli(main: Callable[[], None]) -> int:
    """Run ``main``; turn user errors into one ``error:`` line on stderr and exit code 2, Ctrl-C into
    exit code 130 and SIGTERM into 143 (128 + signal number, as a shell reports them)."""
    owner = os.getpid()

    def on_sigterm(signum, frame):
        if os.getpid() != owner:  # a forked worker inherited this handler: die as SIGTERM would
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        signal.signal(signum, signal.SIG_IGN)  # a second SIGTERM must not interrupt the clean-up
        _stop_workers()
        raise Terminated()

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if in_main_thread else None
    try:
        main()
    except PrepError as err:
        print("error: {}".format(err), file=sys.stderr, flush=True)
        return 2
    except (KeyboardInterrupt, Terminated) as err:
        _stop_workers()
        what = "terminated" if isinstance(err, Terminated) else "interrupted"
        print("{}: finished steps are kept; rerun the same command to continue".format(what), file=sys.stderr,
              flush=True)
        return 128 + (signal.SIGTERM if isinstance(err, Terminated) else signal.SIGINT)
    except OSError as err:  # disk full, permission denied, ...: not a bug, but nothing to retry either
        where = " ({})".format(err.filename) if getattr(err, "filename", None) else ""
        print("error: {}{}".format(err.strerror or err, where), file=sys.stderr, flush=True)
        return 2
    finally:
        if in_main_thread:  # None: the handler was not set from Python (the default one)
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    return 0
