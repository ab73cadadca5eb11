"""The architecture presets of ``srupp_lm``: the one place their numbers are written.

Everything else is derived from :data:`PRESETS`:

* ``SRUppLMConfig``'s defaults are the enwik8 base row (``--arch srupp_lm``);
* every other ``--arch`` is registered from its row by ``srupp_lm.py`` (:meth:`Preset.fill_args`);
* the ``model:`` section of each ``configs/<row>.yaml`` and README's preset table are rendered from
  the rows. Rewrite them after changing a row with ``python -m fairseq_srupp.models``;
  ``--check`` (run by ``tests/test_configs.py``) fails when a file is out of date.

Each row carries the paper's row it reproduces, the parameter count (spec §4, with the data set's
vocabulary: enwik8 205, WikiText-103 267,735, Billion Word 793,471) and the reported test result.
"""
import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from fairseq_srupp.errors import SRUppUserError, not_a_file

# Shared by every paper row (spec §4): 10 layers, 1 head, highway bias −2, pre-norm everywhere.
COMMON = dict(
    num_layers=10, num_heads=1, no_layer_norm=False, normalize_after=False, no_attn_layer_norm=False,
    highway_bias=-2.0, weight_c_init=1.0, adaptive_embed_dim=1024, adaptive_div_value=4.0,
)


@dataclass(frozen=True)
class Corpus:
    name: str  # as the README and the configs name it
    vocab: Optional[int]  # dictionary size the parameter counts assume
    cutoff: Optional[str]  # projected adaptive softmax cluster boundaries; None: byte Linear head
    untie_adaptive_proj: bool  # the paper's lm1b has separate input / output projections
    eval_window: int  # the paper's evaluation window (= eval unroll)
    metric: str


ENWIK8 = Corpus("enwik8", 205, None, False, 3072, "BPC")
WT103 = Corpus("WikiText-103", 267735, "19997,39997,199997", False, 2560, "PPL")
LM1B = Corpus("Billion Word", 793471, "59998,159998", True, 96, "PPL")
ANY = Corpus("any (CPU)", None, None, False, 256, "")


@dataclass(frozen=True)
class Preset:
    """One ``--arch``: its data set, sizes and dropouts, and what the paper reports for it."""

    name: str
    paper: str  # the paper's row (spec §4)
    dataset: Corpus
    hidden_size: int  # n_d
    proj_size: int  # n_proj
    dropout: float
    attn_dropout: float
    params: float  # millions, with dataset.vocab (spec §4)
    reported: Optional[float] = None  # test BPC / PPL; None: no result for this exact setting
    attention_every_n_layers: int = 1
    emb_dropout: float = 0.0
    aliases: Tuple[str, ...] = ()  # further --arch names of the same preset
    config: Optional[str] = None  # configs/<config>.yaml trains this row
    overrides: Dict[str, object] = field(default_factory=dict)  # departures from COMMON

    def values(self) -> Dict[str, object]:
        """Every architecture field of ``SRUppLMConfig`` (:data:`FIELDS`) → its value."""
        out = dict(COMMON)
        out.update(
            hidden_size=self.hidden_size, proj_size=self.proj_size,
            attention_every_n_layers=self.attention_every_n_layers, dropout=self.dropout,
            attn_dropout=self.attn_dropout, emb_dropout=self.emb_dropout,
            adaptive_softmax_cutoff=self.dataset.cutoff, untie_adaptive_proj=self.dataset.untie_adaptive_proj,
            eval_window=self.dataset.eval_window,
        )
        out.update(self.overrides)
        return {name: out[name] for name in FIELDS}

    def fill_args(self, args) -> None:
        """The ``--arch`` function: set every field still unset in ``args`` (command-line values win)."""
        from fairseq.utils import safe_getattr

        for name, value in self.values().items():
            setattr(args, name, safe_getattr(args, name, value))

    @property
    def arch_names(self) -> Tuple[str, ...]:
        return (self.name,) + self.aliases

    @property
    def result(self) -> str:
        return "{} {}".format(self.reported, self.dataset.metric) if self.reported is not None else "—"


# SRUppLMConfig's architecture fields, in the order configs/*.yaml list them; other fields are not preset.
FIELDS = (
    "hidden_size", "proj_size", "num_layers", "num_heads", "attention_every_n_layers", "dropout",
    "attn_dropout", "emb_dropout", "no_layer_norm", "normalize_after", "no_attn_layer_norm", "highway_bias",
    "weight_c_init", "adaptive_softmax_cutoff", "adaptive_embed_dim", "adaptive_div_value",
    "untie_adaptive_proj", "eval_window",
)

# The paper's dropouts per data set (spec §4): enwik8 base 0.22, large 0.32; WikiText-103 base 0.15,
# large 0.2 (attention and embeddings alike); Billion Word 0.05 with no attention / embedding dropout.
PRESETS: Tuple[Preset, ...] = (
    # `--arch srupp_lm` is fairseq's own entry for the model: it takes SRUppLMConfig's defaults, this row.
    Preset("srupp_lm", "enwik8, SRU++ base", ENWIK8, 3072, 768, 0.22, 0.22,
           params=107.6, reported=0.974, aliases=("srupp_lm_enwik8_base",), config="srupp_lm"),
    Preset("srupp_lm_large", "enwik8, SRU++ large as the paper's command trains it", ENWIK8, 4096, 1024, 0.32, 0.32,
           params=190.7, aliases=("srupp_lm_enwik8_large",), config="srupp_lm_large"),
    Preset("srupp_lm_enwik8_large_ratio8", "enwik8, SRU++ large (n_d / n_proj = 8)", ENWIK8, 6016, 752, 0.32, 0.32,
           params=195.1, reported=0.953, config="srupp_lm_enwik8_large_ratio8"),
    Preset("srupp_lm_wt103_base", "WT103, SRU++ base", WT103, 3072, 768, 0.15, 0.15, emb_dropout=0.15,
           params=147.7, reported=18.3, config="srupp_lm_wt103_base"),
    Preset("srupp_lm_wt103_large", "WT103, SRU++ large as the paper's command trains it", WT103, 4096, 1024,
           0.2, 0.2, emb_dropout=0.2, params=231.8, config="srupp_lm_wt103_large"),
    Preset("srupp_lm_wt103_large_ratio8", "WT103, SRU++ large (n_d / n_proj = 8)", WT103, 5952, 744, 0.2, 0.2,
           emb_dropout=0.2, params=233.9, reported=17.1, config="srupp_lm_wt103_large_ratio8"),
    Preset("srupp_lm_wt103_large_ratio8_k5", "WT103, SRU++ large, attention every 5th layer (k=5)", WT103,
           5952, 744, 0.2, 0.2, emb_dropout=0.2, attention_every_n_layers=5, params=225.0, reported=17.3,
           config="srupp_lm_wt103_large_ratio8_k5"),
    Preset("srupp_lm_lm1b_base", "LM1B, SRU++ base", LM1B, 4096, 1024, 0.05, 0.0,
           params=328.4, reported=25.1, config="srupp_lm_lm1b_base"),
    Preset("srupp_lm_lm1b_large_k5", "LM1B, SRU++ large, attention every 5th layer (k=5)", LM1B, 7616, 1024,
           0.05, 0.0, attention_every_n_layers=5, params=465.4, reported=23.5, config="srupp_lm_lm1b_large_k5"),
    # Not a paper row: small enough to train on a laptop CPU (params with enwik8's 205 byte symbols).
    Preset("srupp_lm_tiny", "— (CPU-sized, for demos and tests)", ANY, 256, 128, 0.1, 0.1,
           params=0.77, overrides=dict(num_layers=4)),
)

BY_NAME: Dict[str, Preset] = {name: p for p in PRESETS for name in p.arch_names}
DEFAULT = BY_NAME["srupp_lm"]


# ----------------------------------------------------------------------------- configs/*.yaml

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
# The model section runs from "model:" to the next top-level key (or the end of the file).
MODEL_SECTION = re.compile(r"^model:.*?(?=^\S|\Z)", re.M | re.S)
GENERATED_NOTE = "# generated from fairseq_srupp/models/presets.py: python -m fairseq_srupp.models"
CHAR_LEVEL_NOTES = dict(adaptive_softmax_cutoff="char level: Linear output head",
                        adaptive_embed_dim="unused at char level", adaptive_div_value="unused at char level",
                        untie_adaptive_proj="unused at char level")


def _yaml_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"{}"'.format(value)
    return str(value)


def render_model_section(preset: Preset) -> str:
    """The ``model:`` section of ``configs/<preset.config>.yaml`` (eval_window included: the task
    reads the evaluation window from the model)."""
    lines = ["model:", "  " + GENERATED_NOTE, "  _name: srupp_lm"]
    for name, value in preset.values().items():
        line = "  {}: {}".format(name, _yaml_value(value))
        if preset.dataset.cutoff is None and name in CHAR_LEVEL_NOTES:
            line += "  # " + CHAR_LEVEL_NOTES[name]
        lines.append(line)
    return "\n".join(lines) + "\n\n"


def header_facts(preset: Preset) -> List[str]:
    """Phrases the comment at the top of ``configs/<preset.config>.yaml`` must contain."""
    facts = ["n_d {}, n_proj {}".format(preset.hidden_size, preset.proj_size), "{:.1f}M parameters".format(preset.params)]
    if preset.reported is not None:
        facts.append("reported test {}".format(preset.result))
    return facts


def sync_configs(config_dir: Path = CONFIG_DIR, write: bool = False):
    """Rows whose ``model:`` section differs from its preset (rewritten when ``write``).

    The free-text comment heading each file is not rewritten; a file whose comment lacks one of
    :func:`header_facts` raises, naming the phrase.
    """
    stale = []
    for preset in PRESETS:
        if preset.config is None:
            continue
        path = Path(config_dir) / (preset.config + ".yaml")
        text = path.read_text()
        header = " ".join(line.lstrip("# ").strip() for line in text.split("\ndefaults:")[0].splitlines())
        missing = [fact for fact in header_facts(preset) if fact not in header]
        if missing:
            raise SRUppUserError("{}: the comment at the top should say {} (see presets.py)".format(
                path, " and ".join(repr(f) for f in missing)))
        m = MODEL_SECTION.search(text)
        if m is None:
            raise SRUppUserError("{} has no top-level 'model:' section".format(path))
        wanted = render_model_section(preset)
        if m.group(0) != wanted:
            stale.append(path)
            if write:
                path.write_text(text[: m.start()] + wanted + text[m.end():])
    return stale


# ----------------------------------------------------------------------------------- README

README = CONFIG_DIR.parent / "README.md"
README_TABLE = re.compile(r"^\| `--arch` \|.*?\n(?!\|)", re.M | re.S)


def _attention(preset: Preset) -> str:
    values = preset.values()
    every, layers = values["attention_every_n_layers"], values["num_layers"]
    where = "every layer" if every == 1 else "layers " + ", ".join(str(i) for i in range(every, layers + 1, every))
    return where if layers == COMMON["num_layers"] else "{} ({} layers)".format(where, layers)


def _head(preset: Preset) -> str:
    if preset.dataset.cutoff is None:
        return "Linear"
    return "adaptive, {} proj.".format("untied" if preset.dataset.untie_adaptive_proj else "tied")


def render_readme_table() -> str:
    """README's preset table (its section "Using it with fairseq")."""
    lines = ["| `--arch` | dataset | n_d | n_proj | attention | head | parameters | paper's row | paper's test result |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in PRESETS:
        names = "`{}`".format(p.name) + "".join(" (= `{}`)".format(a) for a in p.aliases)
        lines.append("| {} | {} | {} | {} | {} | {} | {:.{}f}M | {} | {} |".format(
            names, p.dataset.name, p.hidden_size, p.proj_size, _attention(p), _head(p),
            p.params, 1 if p.params >= 10 else 2, p.paper, p.result))
    return "\n".join(lines) + "\n"


def sync_readme(path: Path = README, write: bool = False) -> bool:
    """Whether README's preset table differs from :func:`render_readme_table` (rewritten when ``write``)."""
    text = path.read_text()
    m = README_TABLE.search(text)
    if m is None:
        raise SRUppUserError("{} has no preset table (a line starting with '| `--arch` |'): give the repository's "
                             "README.md with --readme".format(path))
    wanted = render_readme_table()
    if m.group(0) == wanted:
        return False
    if write:
        path.write_text(text[: m.start()] + wanted + text[m.end():])
    return True


def check_sync_inputs(config_dir: Path, readme: Path) -> None:
    """Every file :func:`main` reads is there, else one :class:`SRUppUserError` naming what is missing."""
    if not config_dir.is_dir():
        raise SRUppUserError("--config-dir {} {}: give the repository's configs/ folder".format(
            config_dir, "is not a directory" if config_dir.exists() else "does not exist"))
    missing = [p.config + ".yaml" for p in PRESETS if p.config and not (config_dir / (p.config + ".yaml")).is_file()]
    if missing:
        raise SRUppUserError("--config-dir {} lacks {} of the preset configs ({}): give the repository's configs/ "
                             "folder".format(config_dir, len(missing), ", ".join(missing)))
    if not readme.is_file():
        raise SRUppUserError("--readme {} {}: give the repository's README.md".format(readme, not_a_file(readme)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Rewrite (or --check) the model: sections of configs/*.yaml "
                                                 "from the preset table in fairseq_srupp/models/presets.py.")
    parser.add_argument("--check", action="store_true", help="only report out-of-date files (exit status 1)")
    parser.add_argument("--config-dir", type=Path, default=CONFIG_DIR)
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    check_sync_inputs(args.config_dir, args.readme)
    # Every file is checked before any is rewritten: a bad one further on leaves the others as they were.
    stale = sync_configs(args.config_dir)
    if sync_readme(args.readme):
        stale.append(args.readme)
    if not args.check:
        sync_configs(args.config_dir, write=True)
        sync_readme(args.readme, write=True)
    for path in stale:
        print("{}: {}".format("out of date" if args.check else "rewrote", path))
    return 1 if stale and args.check else 0


