"""The wrapper of fairseq's call_main ends the process group a run started (fairseq_srupp.fairseq_fixes).

fairseq never destroys it, so gloo's threads were torn down at interpreter exit, where a rank could abort
with "terminate called without an active exception" (the rare failure of the 2-rank resume test).
"""
import types

import pytest
import torch.distributed as dist

from fairseq_srupp import fairseq_fixes


def _fake_fairseq(tmp_path, fail=False):
    def call_main(cfg, main, **kwargs):  # as fairseq's distributed_main: init, run main, leave the group
        dist.init_process_group("gloo", init_method="file://{}".format(tmp_path / "rendezvous"), rank=0, world_size=1)
        if fail:
            raise RuntimeError("a rank failed")
        return main(cfg)

    module = types.SimpleNamespace(call_main=call_main)
    fairseq_fixes._wrap_call_main(module)
    return module


def _main(cfg):
    return "trained"


def test_process_group_destroyed_after_a_run(tmp_path):
    assert not dist.is_initialized()
    assert _fake_fairseq(tmp_path).call_main(types.SimpleNamespace(common=None), _main) == "trained"
    assert not dist.is_initialized()


def test_process_group_left_alone_after_an_error(tmp_path):
    # the other ranks may be inside a collective: destroying now could hang them
    with pytest.raises(RuntimeError, match="a rank failed"):
        _fake_fairseq(tmp_path, fail=True).call_main(types.SimpleNamespace(common=None), _main)
    try:
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()
