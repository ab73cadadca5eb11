"""The Hydra configs under ``configs/``: valid keys, the paper's numbers, one real training step each.

* Every row file is composed exactly as ``fairseq-hydra-train --config-dir configs --config-name
  <row>`` does (fairseq's ``FairseqConfig`` schema stored under the row's name, version_base 1.1),
  then merged with the registered dataclasses of its task, model, criterion, optimizer and
  scheduler (fairseq's ``add_defaults``), so a misspelt key anywhere fails.
* The values are compared with spec §4 (``EXPECTED`` below), the model section with the
  ``--arch`` preset of the same name, and the parameter count (model built on the meta device with
  the data set's vocabulary size) with the spec's table.
* Each row then trains one update on CPU with tiny dimensions: one ``fairseq-hydra-train``
  subprocess per data set family (the real command line), the other rows in-process through the
  same composition and ``fairseq_cli.train.main``.
"""
import logging
import math
import os
import re
import shutil
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import fairseq_srupp  # noqa: F401  (registers the plugin's task, model, criterion, optimizer, scheduler)
import fork_server
from cli_utils import BIN, make_char_data, run_tool, synthetic_text

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"
ROWS = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))

ENWIK8 = dict(family="enwik8", vocab=205, eval_unroll=3072, max_update=400000, criterion="cross_entropy",
              ddp_backend="pytorch_ddp", cutoff=None, untie=False, shuffle=False, prepend_eos=False)
WT103 = dict(family="wt103", vocab=267735, eval_unroll=2560, max_update=400000, criterion="srupp_adaptive_loss",
             ddp_backend="legacy_ddp", cutoff="19997,39997,199997", untie=False, shuffle=False, prepend_eos=False)
LM1B = dict(family="lm1b", vocab=793471, eval_unroll=96, max_update=800000, criterion="srupp_adaptive_loss",
            ddp_backend="legacy_ddp", cutoff="59998,159998", untie=True, shuffle=True, prepend_eos=True)

# Spec §4: per row n_d, n_proj, attention period, dropouts, per-GPU streams x unroll, lr, and the
# parameter count of the table (millions, with the data set's vocabulary).
EXPECTED = {
    "srupp_lm": dict(ENWIK8, d=3072, p=768, every=1, dropout=0.22, attn=0.22, emb=0.0,
                     batch=4, unroll=1024, lr=3e-4, params=107.6),
    "srupp_lm_large": dict(ENWIK8, d=4096, p=1024, every=1, dropout=0.32, attn=0.32, emb=0.0,
                           batch=8, unroll=1024, lr=4e-4, params=190.7),
    "srupp_lm_enwik8_large_ratio8": dict(ENWIK8, d=6016, p=752, every=1, dropout=0.32, attn=0.32, emb=0.0,
                                         batch=8, unroll=1024, lr=4e-4, params=195.1),
    "srupp_lm_wt103_base": dict(WT103, d=3072, p=768, every=1, dropout=0.15, attn=0.15, emb=0.15,
                                batch=8, unroll=768, lr=3e-4, params=147.7),
    "srupp_lm_wt103_large": dict(WT103, d=4096, p=1024, every=1, dropout=0.2, attn=0.2, emb=0.2,
                                 batch=8, unroll=1024, lr=3e-4, params=231.8),
    "srupp_lm_wt103_large_ratio8": dict(WT103, d=5952, p=744, every=1, dropout=0.2, attn=0.2, emb=0.2,
                                        batch=8, unroll=1024, lr=3e-4, params=233.9),
    "srupp_lm_wt103_large_ratio8_k5": dict(WT103, d=5952, p=744, every=5, dropout=0.2, attn=0.2, emb=0.2,
                                           batch=8, unroll=1024, lr=3e-4, params=225.0),
    "srupp_lm_lm1b_base": dict(LM1B, d=4096, p=1024, every=1, dropout=0.05, attn=0.0, emb=0.0,
                               batch=128, unroll=64, lr=2e-4, params=328.4),
    "srupp_lm_lm1b_large_k5": dict(LM1B, d=7616, p=1024, every=5, dropout=0.05, attn=0.0, emb=0.0,
                                   batch=128, unroll=64, lr=2e-4, params=465.4),
}
# fairseq's own design (FairseqConfig stored under the config's name) triggers this Hydra warning.
pytestmark = pytest.mark.filterwarnings("ignore:(?s).*is validated against ConfigStore schema")

# One row per family goes through the real fairseq-hydra-train command line.
CLI_ROWS = ("srupp_lm", "srupp_lm_wt103_base", "srupp_lm_lm1b_base")


def compose(name, overrides=(), config_dir=CONFIG_DIR):
    """The resolved config fairseq-hydra-train would train ``name`` with (see fairseq_cli/hydra_train.py)."""
    from fairseq.dataclass.initialize import add_defaults, hydra_init
    from fairseq.dataclass.utils import omegaconf_no_object_check
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    hydra_init(name)  # FairseqConfig stored under the row's name: the schema the YAML is validated against
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.1"):
        cfg = hydra_compose(config_name=name, overrides=list(overrides))
    add_defaults(cfg)  # merge with the registered dataclasses: unknown keys raise here
    with omegaconf_no_object_check():
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    OmegaConf.set_struct(cfg, True)
    return cfg


def test_every_row_is_an_architecture_with_expected_values():
    from fairseq.models import ARCH_MODEL_REGISTRY

    assert ROWS == sorted(EXPECTED), "configs/*.yaml and EXPECTED disagree"
    missing = [row for row in ROWS if row not in ARCH_MODEL_REGISTRY]
    assert not missing, "config names without an --arch of the same name: {}".format(missing)


@pytest.mark.parametrize("row", ROWS)
def test_row_matches_the_paper(row):
    exp = EXPECTED[row]
    cfg = compose(row, ["task.data=/nonexistent"])
    m, t = cfg.model, cfg.task
    assert m._name == "srupp_lm"
    got_model = (m.hidden_size, m.proj_size, m.num_layers, m.num_heads, m.attention_every_n_layers,
                 m.dropout, m.attn_dropout, m.emb_dropout, m.highway_bias, m.no_layer_norm, m.normalize_after,
                 m.no_attn_layer_norm, m.adaptive_softmax_cutoff, m.untie_adaptive_proj, m.eval_window)
    assert got_model == (exp["d"], exp["p"], 10, 1, exp["every"], exp["dropout"], exp["attn"], exp["emb"], -2.0,
                         False, False, False, exp["cutoff"], exp["untie"], exp["eval_unroll"])
    if exp["cutoff"]:
        assert (m.adaptive_embed_dim, m.adaptive_div_value) == (1024, 4.0)
    # One window: the model's eval_window (checked above); the task's deprecated alias stays unset.
    assert (t._name, t.tokens_per_sample, t.eval_unroll_size, t.shuffle_sentences, t.prepend_eos,
            t.no_carry_state) == ("srupp_language_modeling", exp["unroll"], 0, exp["shuffle"],
                                  exp["prepend_eos"], False)
    assert (cfg.dataset.batch_size, t.batch_size, cfg.dataset.max_tokens) == (exp["batch"], exp["batch"], None)
    assert cfg.criterion._name == exp["criterion"]
    o = cfg.optimization
    assert (list(o.lr), o.max_update, o.clip_norm, list(o.update_freq)) == ([exp["lr"]], exp["max_update"], 1.0, [1])
    opt = cfg.optimizer
    assert (opt._name, eval(opt.radam_betas), opt.radam_eps, opt.weight_decay) == ("radam", (0.9, 0.999), 1e-8, 0.1)
    assert list(opt.lr) == [exp["lr"]]
    s = cfg.lr_scheduler
    assert (s._name, s.warmup_updates, s.max_update, list(s.lr)) == ("srupp_cosine", 16000, exp["max_update"], [exp["lr"]])
    assert (cfg.common.fp16, cfg.common.amp, cfg.common.memory_efficient_fp16, cfg.common.cpu) == (True, False, False, False)
    assert cfg.common.user_dir == "fairseq_srupp"
    d = cfg.distributed_training
    assert (d.distributed_world_size, d.ddp_backend) == (8, exp["ddp_backend"])
    assert cfg.checkpoint.save_dir == "checkpoints/" + row
    assert cfg.checkpoint.save_interval_updates > 0 and cfg.dataset.validate_interval_updates > 0
    assert cfg.optimization.max_update % cfg.checkpoint.save_interval_updates == 0


@pytest.mark.parametrize("row", ROWS)
def test_row_model_equals_arch_preset_and_paper_size(row):
    """The YAML model section is the --arch preset of the same name, with the spec's parameter count."""
    from fairseq.models import ARCH_CONFIG_REGISTRY, build_model

    from fairseq_srupp.models.srupp_lm import SRUppLMConfig

    model_cfg = compose(row, ["task.data=/nonexistent"]).model
    preset = Namespace()
    ARCH_CONFIG_REGISTRY[row](preset)
    defaults = SRUppLMConfig()
    for name in SRUppLMConfig.__dataclass_fields__:
        if name == "_name":
            continue
        expected = getattr(preset, name, getattr(defaults, name))
        assert model_cfg[name] == expected, "{}: model.{} = {!r} but --arch {} gives {!r}".format(
            row, name, model_cfg[name], row, expected)

    class Dictionary:  # only the size and the special symbols matter for building the model
        def __len__(self):
            return EXPECTED[row]["vocab"]

        def pad(self):
            return 1

        def eos(self):
            return 2

    task = Namespace(source_dictionary=Dictionary(), target_dictionary=Dictionary())
    with torch.device("meta"):  # no memory, no initialisation work
        model = build_model(model_cfg, task)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params - EXPECTED[row]["params"]) < 0.1, "{}: {:.2f}M parameters, spec {}M".format(
        row, params, EXPECTED[row]["params"])


def leaf_keys(node, prefix=""):
    out = set()
    for key, value in node.items():
        path = prefix + str(key)
        out |= leaf_keys(value, path + ".") if isinstance(value, dict) else {path}
    return out


@pytest.mark.parametrize("row", ROWS)
def test_row_and_base_files_set_disjoint_keys(row):
    """A row lists ``_self_`` first (fairseq's schema defaults would otherwise overwrite its base
    files), so a key set both in a row and in a base file would silently take the base's value."""
    files = [CONFIG_DIR / (row + ".yaml")]
    seen = {}
    while files:
        path = files.pop()
        raw = OmegaConf.to_container(OmegaConf.load(path))
        for entry in raw.pop("defaults", []):
            if entry != "_self_":
                folder = CONFIG_DIR if "/" in entry else path.parent
                files.append(folder / (entry + ".yaml"))
        raw.pop("hydra", None)
        for key in leaf_keys(raw):
            assert key not in seen, "{} is set in both {} and {}".format(key, seen[key].name, path.name)
            seen[key] = path
    assert {"model.hidden_size", "task.tokens_per_sample", "dataset.batch_size", "optimization.lr",
            "optimizer.weight_decay", "model.eval_window"} <= set(seen)


def test_model_sections_and_readme_table_are_rendered_from_the_preset_table():
    from fairseq_srupp.models import presets

    assert presets.sync_configs() == [], "run: python -m fairseq_srupp.models"
    assert not presets.sync_readme(), "README's preset table is stale: run python -m fairseq_srupp.models"
    assert sorted(p.config for p in presets.PRESETS if p.config) == ROWS


def test_preset_sync_finds_and_rewrites_a_stale_model_section(tmp_path):
    from fairseq_srupp.models import presets

    configs = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, configs)
    path = configs / "srupp_lm_wt103_base.yaml"
    original = path.read_text()
    path.write_text(original.replace("  proj_size: 768\n", "  proj_size: 512\n", 1))
    assert presets.main(["--check", "--config-dir", str(configs)]) == 1
    assert presets.sync_configs(configs, write=True) == [path]
    assert path.read_text() == original and presets.sync_configs(configs) == []
    path.write_text(original.replace("147.7M parameters", "147.8M parameters"))  # the comment's facts too
    with pytest.raises(ValueError, match="should say '147.7M parameters'"):
        presets.sync_configs(configs)


@pytest.mark.parametrize("file, line, bad", [
    ("srupp_lm.yaml", "  hidden_size: 3072\n", "  hiden_size: 3072\n"),
    ("base/enwik8.yaml", "  shuffle_sentences: false", "  shufle_sentences: false"),
    ("base/srupp_train.yaml", "  weight_decay: 0.1", "  weight_decy: 0.1"),
    ("base/srupp_train.yaml", "  clip_norm: 1.0", "  clip_nrom: 1.0"),
])
def test_misspelt_key_fails(tmp_path, file, line, bad):
    configs = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, configs)
    text = (configs / file).read_text()
    assert line in text
    (configs / file).write_text(text.replace(line, bad, 1))
    with pytest.raises(Exception, match=bad.strip().split(":")[0]):
        compose("srupp_lm", ["task.data=/nonexistent"], config_dir=configs)


# ---------------------------------------------------------------------------------------------
# One real update per row on CPU with tiny dimensions.

WORD_CUTOFFS = {"wt103": "8,12,16", "lm1b": "8,16"}


def tiny_overrides(row, data, save_dir):
    family = EXPECTED[row]["family"]
    overrides = [
        "task.data={}".format(data), "checkpoint.save_dir={}".format(save_dir), "common.cpu=true", "common.fp16=false",
        "common.log_interval=1", "distributed_training.distributed_world_size=1", "dataset.num_workers=0",
        "model.hidden_size=32", "model.proj_size=16", "model.num_layers=2",
        "optimization.max_update=1", "lr_scheduler.warmup_updates=0",
        "model.eval_window=8",  # the paper's windows are longer than the tiny valid streams (rejected)
    ]
    if family != "enwik8":
        # n_e 64 keeps every cluster width (64 / 4^i) >= 1 with up to 4 clusters.
        overrides += ["model.adaptive_embed_dim=64", "model.adaptive_softmax_cutoff='{}'".format(WORD_CUTOFFS[family])]
    return overrides


def make_word_data(root: Path):
    """Whitespace-tokenised sentences (about 20 word types), binarized with fairseq-preprocess."""
    text = synthetic_text(70000, seed=1).decode()
    cut1, cut2 = int(len(text) * 0.86), int(len(text) * 0.93)
    splits = {"train": text[:cut1], "valid": text[cut1:cut2], "test": text[cut2:]}
    for name, part in splits.items():
        (root / (name + ".txt")).write_text(part[part.index("\n") + 1:] if name != "train" else part)
    data_bin = root / "data-bin"
    run_tool("fairseq-preprocess", "--only-source", "--trainpref", root / "train.txt", "--validpref",
             root / "valid.txt", "--testpref", root / "test.txt", "--destdir", data_bin, "--workers", 1)
    return data_bin


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    char_root, word_root = tmp_path_factory.mktemp("char"), tmp_path_factory.mktemp("word")
    char_bin, word_bin = make_char_data(char_root, n_train=20000, n_valid=2000), make_word_data(word_root)
    from fairseq.data import Dictionary

    assert len(Dictionary.load(str(word_bin / "dict.txt"))) > 16, "tiny word vocabulary too small for the cutoffs"
    return {"enwik8": char_bin, "wt103": word_bin, "lm1b": word_bin}


def assert_one_update(save_dir: Path, train_loss: float):
    assert math.isfinite(train_loss) and train_loss > 0
    ckpt = save_dir / "checkpoint_last.pt"
    assert ckpt.is_file(), "no checkpoint written"
    state = torch.load(str(ckpt), map_location="cpu", weights_only=False)
    assert state["optimizer_history"][-1]["num_updates"] == 1
    assert math.isfinite(state["extra_state"]["val_loss"])
    return state


@pytest.mark.parametrize("row", CLI_ROWS)
def test_one_update_through_fairseq_hydra_train(row, data, tmp_path):
    save_dir = tmp_path / "ckpt"
    args = ["--config-dir", CONFIG_DIR, "--config-name", row, *tiny_overrides(row, data[EXPECTED[row]["family"]], save_dir)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    # From the repository root, as documented: common.user_dir (fairseq_srupp) is relative to it.
    proc = fork_server.run([BIN / "fairseq-hydra-train", *args], cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:]
    losses = re.findall(r"\[train_inner\]\[INFO\] - .* loss=([0-9.]+)", proc.stdout)
    assert losses, proc.stdout[-6000:]
    state = assert_one_update(save_dir, float(losses[-1]))
    assert state["cfg"]["model"]["_name"] == "srupp_lm" and state["cfg"]["task"]["_name"] == "srupp_language_modeling"
    assert list((save_dir / "hydra").glob("*/.hydra/config.yaml")), "hydra's run dir is not under save_dir"


@pytest.mark.parametrize("row", [r for r in ROWS if r not in CLI_ROWS])
def test_one_update_in_process(row, data, tmp_path, caplog):
    from fairseq import distributed_utils
    from fairseq_cli.train import main as train_main

    save_dir = tmp_path / "ckpt"
    overrides = tiny_overrides(row, data[EXPECTED[row]["family"]], save_dir)
    cfg = compose(row, overrides + ["common.user_dir={}".format(REPO / "fairseq_srupp")])
    with caplog.at_level(logging.INFO):
        distributed_utils.call_main(cfg, train_main)
    losses = [float(x) for r in caplog.records for x in re.findall(r"\bloss=([0-9.]+)", r.getMessage())]
    assert losses, caplog.text[-6000:]
    assert_one_update(save_dir, losses[-1])
