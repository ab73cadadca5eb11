"""Write a converted state dict as a fairseq checkpoint that fairseq's tools load."""
from pathlib import Path
from typing import Dict, Sequence

import torch
from torch import Tensor


def build_cfg(data_dir: Path, arch: str, overrides: Dict[str, object], window: int, prepend_eos: bool = False,
              extra_args: Sequence[str] = ()):
    """The config a ``fairseq-train DATA --user-dir fairseq_srupp --task srupp_language_modeling --arch
    ARCH`` run would have, set up for the paper's evaluation.

    The task is the stateful one with segments and attention window ``window`` and one stream
    (``--batch-size 1``: every token gets the whole carried context), so whatever builds the
    checkpoint's own task (``from_pretrained``, ``load_model_ensemble_and_task`` without a task)
    evaluates as the paper; the model's generation window is ``window`` too. ``prepend_eos``:
    Billion Word's sentence layout.
    """
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import fairseq_srupp

    user_dir = str(Path(fairseq_srupp.__file__).parent)
    argv = [str(data_dir), "--user-dir", user_dir, "--task", "srupp_language_modeling", "--arch", arch, "--cpu",
            "--tokens-per-sample", str(window), "--batch-size", "1"]
    if prepend_eos:
        argv.append("--prepend-eos")
    for name, value in dict(overrides, eval_window=window).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):  # every boolean option is a store_true flag
            if value:
                argv.append(flag)
        else:
            argv += [flag, str(value)]
    argv += list(extra_args)
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, argv)
    cfg = convert_namespace_to_omegaconf(args)
    cfg.common.user_dir = None  # the loader passes --user-dir itself; do not pin this machine's path
    return cfg


def save_fairseq_checkpoint(path: Path, cfg, model_state: Dict[str, Tensor]) -> None:
    """Save in the layout ``fairseq.checkpoint_utils.load_checkpoint_to_cpu`` expects.

    The config is stored as plain containers, as fairseq's trainer does: torch.load's default
    ``weights_only=True`` refuses OmegaConf objects.
    """
    from omegaconf import OmegaConf

    state = {
        "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "model": model_state,
        "optimizer_history": [
            {
                "criterion_name": "CrossEntropyCriterion",
                "optimizer_name": "converted",
                "lr_scheduler_state": {"best": None},
                "num_updates": 0,
            }
        ],
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}},
        "last_optimizer_state": None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # Through a file object: torch.save names the archive inside after a path it is given, and the
    # converters write under a temporary name; this way a re-run writes the very same bytes.
    with open(str(path), "wb") as f:
        torch.save(state, f)
