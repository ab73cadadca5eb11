"""Every source file the package reads at run time (C++, CUDA, headers) is in setup.py's
package_data, so an installed wheel (e.g. from `make wheelhouse`) can compile its extensions."""
import ast
import fnmatch
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def package_data_globs():
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "package_data":
            return ast.literal_eval(node.value)["fairseq_srupp"]
    raise AssertionError("setup.py has no package_data")


def test_every_non_python_package_file_is_package_data():
    tracked = subprocess.run(
        ["git", "ls-files", "fairseq_srupp"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    globs = package_data_globs()
    data = [Path(f).relative_to("fairseq_srupp").as_posix() for f in tracked if not f.endswith(".py")]
    assert data, "no C++ / CUDA sources found under fairseq_srupp"
    missing = [f for f in data if not any(fnmatch.fnmatch(f, g) for g in globs)]
    assert not missing, "not in setup.py package_data: {}".format(missing)
