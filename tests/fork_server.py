"""Run the tests' Python commands as forks of one process that has already imported fairseq's dependencies.

A fairseq command spends about 2 s of CPU importing torch, scipy, scikit-learn, hydra and the rest
of what ``import fairseq`` pulls in (fairseq imports every task and criterion) before it reads its
first argument, and about 0.8 s more tearing them down at exit; the tests run about a hundred such
commands. A server started once per pytest worker imports those modules, then forks a child per
command. The child changes to the command's directory and environment, points its descriptors 0-2
at the command's input and output files, and runs the command's script as ``__main__`` (the console
script of ``.venv/bin`` itself, a ``*.py`` file, ``-m module`` or ``-c code``), then exits as that
process would have: the same exit status, atexit handlers and finalization.

fairseq itself (0.4 s) and this project are imported in the child, in the command's own order: fairseq
configures logging as it imports, and its commands configure logging before they import it; the
plugin reads its environment switches when it is imported.

Commands whose environment differs in a variable read when the interpreter or a library starts
(``STARTUP_ENV_PREFIXES``) get a server of their own. ``FAIRSEQ_SRUPP_TEST_FORK=0`` runs every
command as a plain subprocess, as does a machine with a GPU. Tests that check what a fresh process
imports start their processes with ``subprocess`` themselves.

Protocol (JSON lines): the client writes ``{"op": "start", ...}`` and reads ``{"pid": N}``, then
writes ``{"op": "wait", "pid": N}`` and reads ``{"returncode": R}``.
"""
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

# Variables read when the interpreter, OpenMP, BLAS, CUDA or torch start (by name prefix): commands
# whose values differ get servers of their own.
STARTUP_ENV_PREFIXES = ("PYTHON", "OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "LD_", "CUDA", "TORCH", "PYTORCH")
# What ``import fairseq`` imports, less fairseq itself: the server imports these, and leaves fairseq's own
# import (0.4 s) to the child, because fairseq configures logging as it imports and its commands
# configure it before they import fairseq. Also what the commands import later, lazily, at a cost each
# time: torch._dynamo with sympy (1.4 s: every torch optimizer's add_param_group and step import it),
# torch.distributed's FSDP (fairseq's trainer) and torch's C++ extension builder (the plugin's CPU op).
PRELOAD_PROBE = """
import sys
import fairseq
for name in ("torch._dynamo", "torch.distributed.fsdp", "torch.utils.cpp_extension"):
    try:
        __import__(name)
    except ImportError:  # a torch built without distributed: the commands then never import it either
        pass
print("\\n".join(m for m in sorted(sys.modules) if m.split(".")[0] not in ("fairseq", "fairseq_cli", "__main__")))
"""


# ---------------------------------------------------------------- server side (this file as a script)

def _serve(requests, replies):
    """Answer start/wait requests until the client goes; return a start request in each child."""
    while True:
        line = requests.readline()
        if not line:
            os._exit(0)
        request = json.loads(line)
        if request["op"] == "start":
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                requests.close()
                replies.close()
                return request
            reply = {"pid": pid}
        else:
            _, status = os.waitpid(request["pid"], 0)
            reply = {"returncode": os.waitstatus_to_exitcode(status)}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def _redirect(fd, path, flags):
    new = os.open(path, flags, 0o644)
    os.dup2(new, fd)
    os.close(new)


def _become(request):
    """Turn this child into the requested command's process, up to running its ``__main__``."""
    write = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    _redirect(0, request["stdin"] or os.devnull, os.O_RDONLY)
    _redirect(1, request["stdout"], write)
    if request["stderr"]:
        _redirect(2, request["stderr"], write)
    else:
        os.dup2(1, 2)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    kind, target, args = request["kind"], request["target"], request["args"]
    # sys.path[0] as Python sets it: the script's folder, else the working directory.
    sys.path[0] = str(Path(target).resolve().parent) if kind == "script" else os.getcwd()
    import runpy

    if kind == "script":
        sys.argv = [target, *args]
        runpy.run_path(target, run_name="__main__")
    elif kind == "module":
        sys.argv = ["-m", *args]
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        import types

        sys.argv = ["-c", *args]
        main = types.ModuleType("__main__")
        sys.modules["__main__"] = main
        exec(compile(target, "<string>", "exec"), main.__dict__)


def _main(preload_list):
    """Serve on stdin/stdout; ``preload_list`` caches the probe's module names for later servers (of any
    worker or run)."""
    # The protocol gets its own descriptors; 0 and 1 are left for what the preloads might print.
    requests = os.fdopen(os.dup(0), "r")
    replies = os.fdopen(os.dup(1), "w")
    _redirect(0, os.devnull, os.O_RDONLY)
    os.dup2(2, 1)
    import importlib

    names = Path(preload_list).read_text().split() if os.path.exists(preload_list) else None
    if not names:
        probe = subprocess.run([sys.executable, "-c", PRELOAD_PROBE], stdout=subprocess.PIPE, text=True, check=True)
        names = probe.stdout.split()
        partial = "{}.{}".format(preload_list, os.getpid())  # renamed into place: another worker may read it
        Path(partial).write_text("\n".join(names))
        os.replace(partial, preload_list)
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:  # a compiled module's internals, importable only from inside its package
            pass
    assert not any(m.split(".")[0] in ("fairseq", "fairseq_srupp") for m in sys.modules), "imported fairseq"
    assert threading.active_count() == 1, "forking needs a single-threaded server"
    # The preloaded objects live as long as any process would keep them; frozen, the children's
    # collections and exit skip them instead of touching (and so copying) every page they are on.
    import gc

    gc.collect()
    gc.freeze()
    replies.write("ready\n")
    replies.flush()
    _become(_serve(requests, replies))


# ---------------------------------------------------------------- client side (imported by the tests)

def _parse(cmd):
    """(kind, target, args) for a Python command this module can fork, else None."""
    cmd = [str(c) for c in cmd]
    exe, python = Path(os.path.abspath(cmd[0])), Path(os.path.abspath(sys.executable))
    if exe == python or (exe.parent == python.parent and exe.name.startswith("python")):
        if len(cmd) >= 3 and cmd[1] in ("-m", "-c"):
            return ("module" if cmd[1] == "-m" else "code"), cmd[2], cmd[3:]
        if len(cmd) >= 2 and not cmd[1].startswith("-"):
            return "script", cmd[1], cmd[2:]
        return None
    # A console script of this environment: a Python file whose first line runs this interpreter.
    if exe.parent == python.parent and exe.is_file():
        with open(exe, "rb") as f:
            first = f.readline()
        if first.startswith(b"#!") and Path(first[2:].decode().strip()).name.startswith("python"):
            return "script", str(exe), cmd[1:]
    return None


def _preload_list_path():
    """Where the probe's module names are kept, for every worker and later run with the same interpreter and
    packages (the probe costs a fresh ``import fairseq``, 3.5 s): the name hashes what the list depends on."""
    import hashlib
    import importlib.util

    digest = hashlib.sha256("\0".join([sys.executable, sys.version, PRELOAD_PROBE]).encode())
    for package in ("fairseq", "torch"):
        spec = importlib.util.find_spec(package)  # not imported: only located
        if spec is None or not spec.origin:  # not installed (yet): its commands cannot run either
            continue
        for path in (spec.origin, os.path.dirname(os.path.dirname(spec.origin))):  # the package; its site-packages
            digest.update(b"\0%d" % os.stat(path).st_mtime_ns)
    return os.path.join(tempfile.gettempdir(), "fairseq_srupp_fork_preload_{}.txt".format(digest.hexdigest()[:16]))


_preload_list = _preload_list_path()


class _Server:
    def __init__(self, env):
        self.proc = subprocess.Popen([sys.executable, __file__, _preload_list], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, text=True)
        line = self.proc.stdout.readline()
        if line != "ready\n":
            raise RuntimeError("the fork server did not start (exit {})".format(self.proc.wait()))
        self.lock = threading.Lock()

    def ask(self, request, timeout=None):
        with self.lock:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            if not ready:
                return None
            return json.loads(self.proc.stdout.readline())


_servers = {}


def _server_for(env):
    key = tuple(sorted((k, v) for k, v in env.items() if k.startswith(STARTUP_ENV_PREFIXES)))
    if key not in _servers:
        _servers[key] = _Server(env)
    return _servers[key]


class ForkedProcess:
    """The part of ``subprocess.Popen`` the tests use, for a command run by the fork server."""

    def __init__(self, cmd, parsed, env, cwd, stdin_data, stderr_apart, text):
        kind, target, args = parsed
        self.args = cmd
        self.text = text
        self.returncode = None
        self.tmp = tempfile.TemporaryDirectory(prefix="forked_")
        stdin = None
        if stdin_data is not None:
            stdin = os.path.join(self.tmp.name, "stdin")
            with open(stdin, "w" if isinstance(stdin_data, str) else "wb") as f:
                f.write(stdin_data)
        self.out = os.path.join(self.tmp.name, "stdout")
        self.err = os.path.join(self.tmp.name, "stderr") if stderr_apart else None
        self.server = _server_for(env)
        reply = self.server.ask({"op": "start", "kind": kind, "target": target, "args": args, "env": env,
                                 "cwd": str(cwd or os.getcwd()), "stdin": stdin, "stdout": self.out,
                                 "stderr": self.err})
        self.pid = reply["pid"]

    def _read(self, path):
        if path is None:
            return None
        with open(path, "r" if self.text else "rb", **({"errors": "replace"} if self.text else {})) as f:
            return f.read()

    def wait(self, timeout=None):
        if self.returncode is None:
            reply = self.server.ask({"op": "wait", "pid": self.pid}, timeout)
            if reply is None:
                self.kill()
                self.server.proc.stdout.readline()  # the wait's answer, now that the child is gone
                self.returncode = -signal.SIGKILL
                raise subprocess.TimeoutExpired(self.args, timeout, output=self._read(self.out))
            self.returncode = reply["returncode"]
        return self.returncode

    def communicate(self, timeout=None):
        self.wait(timeout)
        return self._read(self.out), self._read(self.err)

    def kill(self):
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def enabled(env):
    """Forking is on unless the command's environment says FAIRSEQ_SRUPP_TEST_FORK=0, or a GPU is visible:
    CUDA does not survive a fork once a library has initialised it, and some initialise it as they import."""
    return env.get("FAIRSEQ_SRUPP_TEST_FORK", "1") != "0" and not _gpu_visible()


def _gpu_visible():
    import torch

    return torch.cuda.is_available()


def popen(cmd, env=None, cwd=None, stderr_apart=False, text=True):
    """Start ``cmd`` through the fork server when it is a Python command and forking is enabled, else as a
    plain subprocess; ``communicate`` returns its stdout (with stderr, unless ``stderr_apart``)."""
    cmd, env = [str(c) for c in cmd], dict(os.environ if env is None else env)
    parsed = _parse(cmd) if enabled(env) else None
    if parsed is not None:
        return ForkedProcess(cmd, parsed, env, cwd, None, stderr_apart, text)
    return subprocess.Popen(cmd, env=env, cwd=cwd, text=text, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE if stderr_apart else subprocess.STDOUT)


def run(cmd, env=None, cwd=None, input=None, timeout=None, stderr_apart=False, text=True):
    """``subprocess.run(cmd, stdout=PIPE, stderr=STDOUT, or PIPE with stderr_apart)``, forked when possible."""
    cmd, env = [str(c) for c in cmd], dict(os.environ if env is None else env)
    parsed = _parse(cmd) if enabled(env) else None
    if parsed is not None:
        proc = ForkedProcess(cmd, parsed, env, cwd, input, stderr_apart, text)
        out, err = proc.communicate(timeout)
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    return subprocess.run(cmd, env=env, cwd=cwd, input=input, timeout=timeout, text=text,
                          stdin=None if input is not None else subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE if stderr_apart else subprocess.STDOUT)


if __name__ == "__main__":
    _main(sys.argv[1])
