"""The reference ``sru`` builds its CUDA kernel on current PyTorch (``fairseq_srupp.bench.paper_sru``).

sru==3.0.0.dev6 dispatches on ``U.type()``, which torch >= 2.11's dispatch macros reject, so its kernel
did not compile on the GPU kit's machine (checked with nvcc 13.0 and torch 2.11: 8 such errors; with
the header force-included it builds and its ops load). There is no nvcc here, so the header is checked
with the host compiler on the same macro pattern, and ``import_sru`` with a stand-in for sru.
"""
import os
import subprocess
import sys
import sysconfig

import pytest
import torch.utils.cpp_extension as cpp_extension

from fairseq_srupp.bench import paper_sru

# The pattern of every kernel launch in sru's sru_cuda_kernel.cu.
SRU_DISPATCH = r"""
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
double first(const at::Tensor& U) {
  double out = 0;
  AT_DISPATCH_FLOATING_TYPES_AND_HALF(U.type(), "first", ([&] { out = static_cast<double>(U.data_ptr<scalar_t>()[0]); }));
  return out;
}
"""


def test_compat_header_makes_sru_dispatch_compile(tmp_path):
    source = tmp_path / "dispatch.cpp"
    source.write_text(SRU_DISPATCH)
    cmd = ["c++", "-std=c++17", "-fsyntax-only", "-DTORCH_EXTENSION_NAME=probe", "-I",
           sysconfig.get_paths()["include"], *("-I" + p for p in cpp_extension.include_paths()), str(source)]
    procs = [subprocess.Popen(cmd + extra, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for extra in ([], ["-include", str(paper_sru.COMPAT_HEADER)])]
    (plain, _), (with_header, _) = (p.communicate(timeout=300) for p in procs)
    assert procs[0].returncode != 0 and "DeprecatedTypeProperties" in plain, plain[-2000:]  # the failure sru hits
    assert procs[1].returncode == 0, with_header[-2000:]


FAKE_SRU = """
import os, warnings
FLAGS_AT_IMPORT = os.environ.get("NVCC_PREPEND_FLAGS")
if {fail}:  # what sru==3.0.0.dev6's cuda_functional.py warns before it loads its dummy op
    warnings.warn("Just-in-time loading and compiling the CUDA kernels of SRU was unsuccessful. Got the following "
                  "error:\\nError building extension 'sru_cuda'\\nnvcc: exit status 1")
"""


@pytest.mark.parametrize("fail", [True, False])
def test_import_sru_sets_the_flag_only_for_the_import_and_reports_a_failed_build(tmp_path, monkeypatch, fail):
    """sru builds when imported: a stand-in package records the flags it was imported with (the real sru is
    imported once per process, so it cannot be imported again here)."""
    (tmp_path / "sru").mkdir()
    (tmp_path / "sru" / "__init__.py").write_text(FAKE_SRU.format(fail=fail))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "sru" or m.startswith("sru.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setenv("NVCC_PREPEND_FLAGS", "-lineinfo")
    paper_sru.import_sru.cache_clear()
    try:
        sru, failed = paper_sru.import_sru()
        assert paper_sru.import_sru() == (sru, failed)  # once per process, as sru's own build
    finally:
        paper_sru.import_sru.cache_clear()
    assert sru.__file__.startswith(str(tmp_path))
    assert sru.FLAGS_AT_IMPORT == "-include {} -lineinfo".format(paper_sru.COMPAT_HEADER)
    assert failed == ("nvcc: exit status 1" if fail else None)
    assert os.environ["NVCC_PREPEND_FLAGS"] == "-lineinfo"  # restored
