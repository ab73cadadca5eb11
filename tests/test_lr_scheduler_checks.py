"""Learning-rate scheduler settings: each one the plugin refuses makes fairseq's own scheduler fail (built and
stepped through --max-update here), and each one it lets through runs there."""
import re
from argparse import Namespace

import pytest
import torch
from omegaconf import OmegaConf

from fairseq_srupp.errors import SRUppUserError

# (scheduler, its settings, --lr, --max-update, the refusal or None for a setting that runs)
CASES = [
    ("inverse_sqrt", dict(warmup_updates=0), [0.1], 10,
     "--lr-scheduler inverse_sqrt needs --warmup-updates >= 1 (the rate rises linearly over them, then falls as "
     "1/sqrt(update)), got 0"),
    ("inverse_sqrt", dict(warmup_updates=-3), [0.1], 10, "needs --warmup-updates >= 1"),
    ("inverse_sqrt", dict(warmup_updates=2), [0.1, 0.2], 10,
     "--lr 0.1,0.2 gives one rate per epoch, which --lr-scheduler inverse_sqrt does not take: give one --lr (or "
     "--lr-scheduler fixed for a rate per epoch)"),
    ("inverse_sqrt", dict(warmup_updates=2), [0.1], 10, None),
    ("polynomial_decay", dict(total_num_update=0), [0.1], 10,
     "--lr-scheduler polynomial_decay needs --total-num-update >= 1 (updates over which the rate decays; by default "
     "--max-update), got 0"),
    ("polynomial_decay", dict(), [0.1], 10, None),  # the default: --max-update
    ("polynomial_decay", dict(warmup_updates=3, total_num_update=5), [0.1, 0.2], 10, None),
    ("tri_stage", dict(), [0.1], 10, "--lr-scheduler tri_stage needs a decay stage of at least 1 update: give "
                                     "--phase-ratio (warmup, hold and decay fractions of --max-update) or --decay-steps"),
    ("tri_stage", dict(warmup_steps=3, hold_steps=3), [0.1], 10, "needs a decay stage of at least 1 update"),
    ("tri_stage", dict(phase_ratio=[0.5, 0.5, 0.0]), [0.1], 10, "needs a decay stage of at least 1 update"),
    ("tri_stage", dict(phase_ratio=[0.1, 0.4, 0.5]), [0.1], 1, "needs a decay stage of at least 1 update"),
    ("tri_stage", dict(phase_ratio=[0.1, 0.4, 0.4]), [0.1], 10,
     "--phase-ratio (0.1, 0.4, 0.4) must add up to exactly 1 (warmup, hold and decay fractions of --max-update)"),
    ("tri_stage", dict(phase_ratio=[0.1, 0.4, 0.5]), [0.1], 0,
     "--phase-ratio needs --max-update (--lr-scheduler tri_stage's stages are fractions of it)"),
    ("tri_stage", dict(phase_ratio=[0.1, 0.4, 0.5]), [0.1, 0.05], 10, "which --lr-scheduler tri_stage does not take"),
    ("tri_stage", dict(phase_ratio=[0.1, 0.4, 0.5]), [0.1], 10, None),
    ("tri_stage", dict(warmup_steps=2, decay_steps=1), [0.1], 10, None),
    ("step", dict(lr_deacy_period=0), [0.1], 10,
     "--lr-deacy-period (updates between decays of --lr-scheduler step) must be >= 1, got 0"),
    ("step", dict(lr_deacy_period=3, lr_decay=1.5), [0.1], 10, "--lr-decay (the factor applied every "
                                                               "--lr-deacy-period updates) must be <= 1, got 1.5"),
    ("step", dict(lr_deacy_period=3, min_lr=-1.0), [0.1], 10, "--min-lr must be >= 0, got -1.0"),
    ("step", dict(lr_deacy_period=3, min_lr=0.1), [0.1], 10, "--lr 0.1 must be above --min-lr 0.1 with "
                                                             "--lr-scheduler step"),
    ("step", dict(lr_deacy_period=3), [0.1], 10, None),
    ("triangular", dict(max_lr=0.05, lr_period_updates=4), [0.1], 10,
     "--max-lr 0.05 must be above --lr 0.1: --lr-scheduler triangular cycles between them"),
    ("triangular", dict(max_lr=0.5, lr_period_updates=4), [0.1], 10, None),
    ("cosine", dict(), [0.1], 0, "--lr-scheduler cosine needs --max-update (its period is --max-update minus "
                                 "--warmup-updates) or --lr-period-updates"),
    ("cosine", dict(warmup_updates=10), [0.1], 10, "--warmup-updates 10 equals --max-update 10: --lr-scheduler "
                                                   "cosine's period (--max-update minus --warmup-updates) would be 0"),
    ("cosine", dict(warmup_updates=2), [0.1, 0.2], 10, "which --lr-scheduler cosine does not take"),
    ("cosine", dict(warmup_updates=2), [0.1], 10, None),
    ("reduce_lr_on_plateau", dict(), [0.1, 0.2], 10, "which --lr-scheduler reduce_lr_on_plateau does not take"),
    ("reduce_lr_on_plateau", dict(), [0.1], 10, None),
    ("fixed", dict(), [0.1, 0.2], 10, None),
]


def _config(name, settings, lr, max_update):
    from fairseq.optim.lr_scheduler import LR_SCHEDULER_DATACLASS_REGISTRY

    scheduler = OmegaConf.structured(LR_SCHEDULER_DATACLASS_REGISTRY[name])
    scheduler.update(dict(settings, _name=name))
    cfg = OmegaConf.create({"optimization": {"lr": lr, "max_update": max_update}, "lr_scheduler": scheduler,
                            "checkpoint": {"maximize_best_checkpoint_metric": False}})
    OmegaConf.resolve(cfg)  # the scheduler's lr and total_num_update interpolate the optimization section
    return cfg


def _run_fairseqs_scheduler(cfg):
    from fairseq.optim.lr_scheduler import build_lr_scheduler
    from fairseq.optim.sgd import SGD

    optimizer = SGD(Namespace(lr=list(cfg.optimization.lr), momentum=0.0, weight_decay=0.0),
                    [torch.nn.Parameter(torch.zeros(1))])
    scheduler = build_lr_scheduler(cfg.lr_scheduler, optimizer)
    scheduler.step_begin_epoch(1)
    for update in range(cfg.optimization.max_update + 1):  # the trainer steps it at update 0 as it builds it
        scheduler.step_update(update)
    scheduler.step(1, val_loss=1.0)


@pytest.mark.parametrize("name,settings,lr,max_update,message", CASES,
                         ids=["{}-{}".format(c[0], i) for i, c in enumerate(CASES)])
def test_refused_exactly_where_fairseqs_scheduler_fails(name, settings, lr, max_update, message):
    from fairseq_srupp.lr_scheduler_checks import check_lr_scheduler

    cfg = _config(name, settings, lr, max_update)
    if message is None:
        check_lr_scheduler(cfg)
        _run_fairseqs_scheduler(cfg)
        return
    with pytest.raises(SRUppUserError, match=re.escape(message)):
        check_lr_scheduler(cfg)
    with pytest.raises((AssertionError, ValueError, ZeroDivisionError)):
        _run_fairseqs_scheduler(cfg)


def test_polynomial_decay_from_the_command_line_decays_over_max_update():
    """fairseq's parser left --total-num-update None (its config's default interpolates --max-update), which Hydra
    refused: every `--lr-scheduler polynomial_decay` without --total-num-update failed."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import fairseq_srupp

    fairseq_srupp.register()
    cmd = ["data", "--task", "language_modeling", "--arch", "srupp_lm_tiny", "--lr-scheduler", "polynomial_decay",
           "--max-update", "30"]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), cmd))
    assert cfg.lr_scheduler.total_num_update == 30


def test_an_option_its_config_requires_is_named_when_left_out(capsys):
    """--lr-scheduler triangular's --max-lr defaults to OmegaConf's "???": argparse read that as the value and
    failed with "invalid float value: '???'"."""
    from fairseq import options

    import fairseq_srupp

    fairseq_srupp.register()
    cmd = ["data", "--task", "language_modeling", "--arch", "srupp_lm_tiny", "--lr-scheduler", "triangular"]
    with pytest.raises(SystemExit):
        options.parse_args_and_arch(options.get_training_parser(), cmd)
    assert "the following arguments are required: --max-lr" in capsys.readouterr().err
    args = options.parse_args_and_arch(options.get_training_parser(), cmd + ["--max-lr", "0.5"])
    assert args.max_lr == 0.5
