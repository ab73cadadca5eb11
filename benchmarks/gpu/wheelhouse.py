"""Build a wheelhouse: every package fairseq-srupp needs on an offline GPU machine, in one folder.

    make wheelhouse PY=3.12        # = python benchmarks/gpu/wheelhouse.py --python-version 3.12 --dest wheelhouse

The target is a machine with no package index that already has PyTorch, numpy, CuPy and the
usual scientific stack (``TARGET_PACKAGES``, read off the lent GPU machines' image), but none of
fairseq, hydra-core, omegaconf, antlr4, bitarray, sacremoses or sru. The folder gets

* binary and pure-Python wheels for the target's Python (``pip download --only-binary=:all:
  --python-version X.Y --platform manylinux... --no-deps``, one pinned version of each);
* wheels built here for the packages PyPI has only as source (``BUILD_HERE``: pure Python, so a
  ``py3-none-any`` wheel built on this machine serves any Python 3);
* fairseq-fixed's source distribution as well as its wheel, so that ``install.py`` can rebuild
  fairseq there (``--no-build-isolation``) if its compiled modules do not import against the
  target's numpy / torch;
* this project's own wheel;
* ``manifest.json``: the target Python, the fallback source builds and the modules that decide
  whether they are needed.

Torch and CuPy are never downloaded (the target has them, and they would not fit the 64 MB a
device call may carry). At the end every ``Requires-Dist`` of every wheel in the folder (for the
target's Python on Linux x86-64, extras ignored) must be met by a wheel in the folder or by a
package the target already has; the folder's size and content are printed.
"""
import argparse
import email.parser
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

try:
    from packaging.markers import Marker  # noqa: F401  (probe)
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ImportError:  # a bare system Python: pip vendors the same library
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
MAX_BYTES = 64 * 10**6  # a device call carries at most 64 MiB, the working tree included

# Pinned to the versions the CPU test environment runs (make install), so the GPU sees the same code.
DOWNLOAD = [
    "fairseq-fixed==0.12.3.1",  # cp312 manylinux wheel, 20 MB
    "bitarray==3.12.3",
    "cffi==2.1.1",
    "pycparser==3.12",
    "hydra-core==1.3.2",
    "omegaconf==2.3.0",
    "sacremoses==0.2.0",
    "sru==3.0.0.dev6",  # the paper's reference: its CUDA kernel is compiled there with ninja + nvcc
    "tensorboardX==2.6.5",  # fairseq's --tensorboard-logdir writer
]
BUILD_HERE = ["antlr4-python3-runtime==4.9.3"]  # sdist only on PyPI
# Source distributions kept as a fallback, with the compiled modules whose import decides it.
FALLBACK_SDISTS = {
    "fairseq-fixed==0.12.3.1": ["fairseq.data.data_utils_fast", "fairseq.data.token_block_utils_fast"],
}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]

# The lent GPU machines' image ('cuda'), as listed in the device notes on 2026-11-17 (pip names).
TARGET_PACKAGES = frozenset(canonicalize_name(n) for n in """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx
onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())


def missing_project_requirements(python_version, extras=("test", "cuda13"), provided=TARGET_PACKAGES):
    """Requirements of setup.py (install_requires and ``extras``, for the target's Python) that neither
    DOWNLOAD / BUILD_HERE nor the target's own packages provide: they must be added to DOWNLOAD."""
    # In a fresh interpreter: setuptools' distutils shim refuses to load after the stdlib's was imported.
    read = ("import json; from distutils.core import run_setup; d = run_setup('setup.py', stop_after='init'); "
            "print(json.dumps([list(d.install_requires), d.extras_require]))")
    out = subprocess.run([sys.executable, "-c", read], cwd=REPO, stdout=subprocess.PIPE, text=True, check=True)
    install_requires, extras_require = json.loads(out.stdout.strip().splitlines()[-1])
    lines = install_requires + [r for e in extras for r in extras_require.get(e, [])]
    ours = {canonicalize_name(Requirement(r).name) for r in DOWNLOAD + BUILD_HERE}
    env = target_environment(python_version)
    return [line for line in lines
            if (Requirement(line).marker is None or Requirement(line).marker.evaluate(env))
            and canonicalize_name(Requirement(line).name) not in ours | provided]


def download_command(python_version, dest, requirements, pip=(sys.executable, "-m", "pip")):
    """The ``pip download`` argv fetching ``requirements`` as wheels for the target Python."""
    cmd = [*pip, "download", "--no-deps", "--only-binary=:all:", "--python-version", python_version,
           "--implementation", "cp"]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    return cmd + ["--dest", str(dest), *requirements]


def sdist_command(dest, requirements, pip=(sys.executable, "-m", "pip")):
    """``pip download`` argv of source distributions (metadata prepared here without isolation)."""
    return [*pip, "download", "--no-deps", "--no-binary=:all:", "--no-build-isolation", "--dest", str(dest),
            *requirements]


def build_wheel_command(dest, requirements, pip=(sys.executable, "-m", "pip")):
    """``pip wheel`` argv building pure-Python wheels of sdist-only requirements."""
    return [*pip, "wheel", "--no-deps", "--no-binary=:all:", "--wheel-dir", str(dest), *requirements]


def project_wheel_command(source, dest, pip=(sys.executable, "-m", "pip")):
    return [*pip, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(dest), str(source)]


def wheel_metadata(path):
    """(canonical name, Version, [Requires-Dist strings]) of a wheel file."""
    with zipfile.ZipFile(path) as zf:
        meta = next(n for n in zf.namelist() if re.match(r"[^/]+\.dist-info/METADATA$", n))
        msg = email.parser.Parser().parsestr(zf.read(meta).decode("utf-8"))
    return canonicalize_name(msg["Name"]), Version(msg["Version"]), msg.get_all("Requires-Dist") or []


def target_environment(python_version):
    """Marker environment of CPython ``python_version`` on Linux x86-64."""
    return {"python_version": python_version, "python_full_version": python_version + ".0",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def check_folder(folder, python_version, provided=TARGET_PACKAGES):
    """Problems of a wheelhouse: duplicate packages, and requirements that neither a wheel in the folder
    nor the target's own packages meet. Returns a list of one-line messages (empty: complete)."""
    env = target_environment(python_version)
    wheels, problems = {}, []
    for path in sorted(Path(folder).glob("*.whl")):
        name, version, requires = wheel_metadata(path)
        if name in wheels:
            problems.append("two wheels of {}: {} and {} (pip refuses to install both)".format(
                name, wheels[name][0].name, path.name))
        wheels[name] = (path, version, requires)
    for name, (path, _, requires) in wheels.items():
        for line in requires:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            dep = canonicalize_name(req.name)
            if dep in wheels:
                if not req.specifier.contains(wheels[dep][1], prereleases=True):
                    problems.append("{} needs {} but the folder has {}".format(name, req, wheels[dep][1]))
            elif dep not in provided:
                problems.append("{} needs {}: no wheel in the folder and not on the target".format(name, req))
    return problems


def folder_listing(folder):
    """[(file name, bytes)] and the total, for the report."""
    files = sorted((p.name, p.stat().st_size) for p in Path(folder).iterdir() if p.is_file())
    return files, sum(size for _, size in files)


def copy_sources(dest):
    """Copy the project's sources (not venvs, builds or this folder) so ``pip wheel`` builds out of tree."""
    skip = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "wheelhouse",
                                  ".whl", ".gl", "demo_out", "checkpoints", "quality_out", ".pytest_cache")
    shutil.copytree(REPO, dest, ignore=skip)
    return dest


def run(cmd):
    print("+ " + " ".join(shlex.quote(str(c)) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build(dest, python_version):
    dest.mkdir(parents=True, exist_ok=True)
    run(download_command(python_version, dest, DOWNLOAD))
    run(build_wheel_command(dest, BUILD_HERE))
    run(sdist_command(dest, list(FALLBACK_SDISTS)))
    with tempfile.TemporaryDirectory() as tmp:
        run(project_wheel_command(copy_sources(Path(tmp) / "src"), dest))
    fallback = []
    for req, modules in FALLBACK_SDISTS.items():
        name, version = req.split("==")
        stem = "{}-{}".format(canonicalize_name(name).replace("-", "_"), version)
        sdist = [p.name for p in dest.glob("*.tar.gz") if p.name.lower().startswith(stem.lower())]
        if not sdist:
            raise SystemExit("error: pip saved no source distribution of {} in {}".format(req, dest))
        fallback.append({"requirement": req, "sdist": sdist[0], "import_check": modules})
    files, total = folder_listing(dest)
    manifest = {"python_version": python_version, "fallback_sdists": fallback,
                "files": {n: {"bytes": s, "sha256": sha256(dest / n)} for n, s in files if n != "manifest.json"}}
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--python-version", default="3.12", help="the target's Python, X.Y (default 3.12)")
    p.add_argument("--dest", default=str(REPO / "wheelhouse"), help="folder to fill (default: wheelhouse/)")
    p.add_argument("--print-commands", action="store_true", help="print the pip commands and exit")
    p.add_argument("--check-only", action="store_true", help="check an existing folder and exit")
    args = p.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", args.python_version):
        p.error("--python-version must look like 3.12, got {!r}".format(args.python_version))
    dest = Path(args.dest).resolve()
    if args.print_commands:
        for cmd in (download_command(args.python_version, dest, DOWNLOAD), build_wheel_command(dest, BUILD_HERE),
                    sdist_command(dest, list(FALLBACK_SDISTS)), project_wheel_command(REPO, dest)):
            print(" ".join(shlex.quote(str(c)) for c in cmd))
        return 0
    if not args.check_only:
        build(dest, args.python_version)
    elif not dest.is_dir():
        p.error("no folder {}".format(dest))
    files, total = folder_listing(dest)
    for name, size in files:
        print("{:>12,}  {}".format(size, name))
    print("{:>12,}  total, {} files in {}".format(total, len(files), dest))
    problems = check_folder(dest, args.python_version)
    if total > MAX_BYTES:
        problems.append("the folder holds {:.1f} MB, over the {:.0f} MB a device call carries".format(
            total / 1e6, MAX_BYTES / 1e6))
    for line in problems:
        print("error: " + line, file=sys.stderr)
    if not problems:
        print("complete: every requirement is met by the folder or by the target's own packages")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
