"""Install a wheelhouse made by ``make wheelhouse`` on a machine with no package index.

    python3 benchmarks/gpu/install.py wheelhouse [--target DIR]

1. every ``*.whl`` in the folder, in one ``pip install --no-index --no-deps --no-build-isolation``
   (into the running Python's environment, so console scripts such as ``fairseq-train`` land next to
   it; or into --target, then put DIR on PYTHONPATH and DIR/bin on PATH);
2. for each fallback in ``manifest.json`` (fairseq-fixed): import its compiled modules in a fresh
   Python; if that fails (a numpy / torch ABI the wheel was not built for), build the package from its
   source distribution in the folder with ``--no-build-isolation`` against what is installed, and
   import again. An error line says what could not be installed.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

PIP_OFFLINE = ["-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation", "--no-cache-dir",
               "--disable-pip-version-check"]


def pip_command(python, files, target=None, reinstall=False):
    cmd = [python, *PIP_OFFLINE]
    if target is not None:
        cmd += ["--target", str(target), "--upgrade"]  # --upgrade: replace what an earlier run put there
    elif reinstall:
        cmd += ["--force-reinstall"]
    return cmd + [str(f) for f in files]


def import_error(python, modules, target=None):
    """None if ``modules`` import in a fresh ``python`` (seeing --target first), else the last error line."""
    env = dict(os.environ)
    if target is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(target), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([python, "-c", "import " + ", ".join(modules)], env=env, cwd="/",
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return None if proc.returncode == 0 else (proc.stdout.strip().splitlines() or ["exit status {}".format(
        proc.returncode)])[-1]


def run(cmd):
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode


def install(folder, target=None, python=sys.executable):
    """Install ``folder``; return a list of error lines (empty on success)."""
    folder = Path(folder)
    if not folder.is_dir():
        return ["no wheelhouse folder {} (make it with `make wheelhouse PY=3.12` where pip can download)".format(
            folder)]
    wheels = sorted(folder.glob("*.whl"))
    manifest_path = folder / "manifest.json"
    if not wheels or not manifest_path.exists():
        return ["{} holds no wheels or no manifest.json: not a folder made by `make wheelhouse`".format(folder)]
    manifest = json.loads(manifest_path.read_text())
    if run(pip_command(python, wheels, target)) != 0:
        return ["pip could not install the wheels of {} (see its output above)".format(folder)]
    errors = []
    for fb in manifest.get("fallback_sdists", []):
        why = import_error(python, fb["import_check"], target)
        if why is None:
            print("{}: compiled modules import ({})".format(fb["requirement"], ", ".join(fb["import_check"])))
            continue
        print("{}: the wheel's compiled modules do not import ({}); building it from {}".format(
            fb["requirement"], why, fb["sdist"]), flush=True)
        if run(pip_command(python, [folder / fb["sdist"]], target, reinstall=True)) != 0:
            errors.append("could not build {} from {}".format(fb["requirement"], fb["sdist"]))
            continue
        why = import_error(python, fb["import_check"], target)
        if why is not None:
            errors.append("{} built from source still does not import: {}".format(fb["requirement"], why))
    return errors


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder", help="the wheelhouse (default name: wheelhouse)")
    p.add_argument("--target", default=None, help="install into this folder instead of the running environment")
    args = p.parse_args(argv)
    errors = install(args.folder, args.target)
    for line in errors:
        print("error: " + line, file=sys.stderr)
    if not errors:
        print("installed {} offline".format(args.folder))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
