"""fairseq learning-rate scheduler settings that fail once the trainer builds the scheduler (an
``AssertionError`` without a message, a ``ZeroDivisionError``, a ``ValueError`` traceback) or at the last
update, refused by :func:`check_lr_scheduler` before any data is read (called from
:func:`fairseq_srupp.train_checks.check_train_config`).

The plugin's own ``srupp_cosine`` checks its settings itself.
"""
from fairseq_srupp.errors import SRUppUserError

# schedulers that raise a ValueError for one rate per epoch (--lr 0.1,0.05)
ONE_RATE_ONLY = ("cosine", "inverse_sqrt", "reduce_lr_on_plateau", "tri_stage", "triangular")


def _cosine(scheduler, optimization):
    if scheduler.lr_period_updates > 0:
        return
    # fairseq's cosine asserts (a traceback) without a period
    max_update, warmup = optimization.max_update, scheduler.warmup_updates
    if max_update <= 0:
        raise SRUppUserError("--lr-scheduler cosine needs --max-update (its period is --max-update minus "
                             "--warmup-updates) or --lr-period-updates")
    # a longer warmup never ends (allowed: the demo's short runs); an equal one leaves a period of 0 updates,
    # which fairseq divides by at the last update, before the last checkpoint is saved
    if warmup == max_update:
        raise SRUppUserError("--warmup-updates {} equals --max-update {}: --lr-scheduler cosine's period (--max-update "
                             "minus --warmup-updates) would be 0: change one of them or give --lr-period-updates".format(
                                 warmup, max_update))


def _inverse_sqrt(scheduler, optimization):
    if scheduler.warmup_updates < 1:  # fairseq divides by it (ZeroDivisionError)
        raise SRUppUserError("--lr-scheduler inverse_sqrt needs --warmup-updates >= 1 (the rate rises linearly over "
                             "them, then falls as 1/sqrt(update)), got {}".format(scheduler.warmup_updates))


def _polynomial_decay(scheduler, optimization):
    if scheduler.total_num_update < 1:
        raise SRUppUserError("--lr-scheduler polynomial_decay needs --total-num-update >= 1 (updates over which the "
                             "rate decays; by default --max-update), got {:g}".format(scheduler.total_num_update))


def _tri_stage(scheduler, optimization):
    ratio = scheduler.phase_ratio
    if ratio is not None:
        if optimization.max_update <= 0:
            raise SRUppUserError("--phase-ratio needs --max-update (--lr-scheduler tri_stage's stages are fractions "
                                 "of it)")
        if sum(ratio) != 1:  # fairseq compares the float sum with 1 exactly
            raise SRUppUserError("--phase-ratio {} must add up to exactly 1 (warmup, hold and decay fractions of "
                                 "--max-update), e.g. (0.1,0.4,0.5)".format(tuple(ratio)))
        decay = int(optimization.max_update * ratio[2])
    else:
        decay = scheduler.decay_steps
    if decay < 1:  # fairseq divides by the decay stage's length (ZeroDivisionError), or asserts on no stages
        raise SRUppUserError("--lr-scheduler tri_stage needs a decay stage of at least 1 update: give --phase-ratio "
                             "(warmup, hold and decay fractions of --max-update) or --decay-steps >= 1 (with "
                             "--warmup-steps and --hold-steps)")


def _step(scheduler, optimization):
    # fairseq's four bare asserts, in its order (its flag is spelled --lr-deacy-period)
    if scheduler.lr_deacy_period < 1:
        raise SRUppUserError("--lr-deacy-period (updates between decays of --lr-scheduler step) must be >= 1, got "
                             "{}".format(scheduler.lr_deacy_period))
    if scheduler.lr_decay > 1:
        raise SRUppUserError("--lr-decay (the factor applied every --lr-deacy-period updates) must be <= 1, got "
                             "{}".format(scheduler.lr_decay))
    if scheduler.min_lr < 0:
        raise SRUppUserError("--min-lr must be >= 0, got {}".format(scheduler.min_lr))
    if not optimization.lr[0] > scheduler.min_lr:
        raise SRUppUserError("--lr {} must be above --min-lr {} with --lr-scheduler step".format(
            optimization.lr[0], scheduler.min_lr))


def _triangular(scheduler, optimization):
    if not scheduler.max_lr > optimization.lr[0]:
        raise SRUppUserError("--max-lr {} must be above --lr {}: --lr-scheduler triangular cycles between them".format(
            scheduler.max_lr, optimization.lr[0]))


CHECKS = {"cosine": _cosine, "inverse_sqrt": _inverse_sqrt, "polynomial_decay": _polynomial_decay,
          "tri_stage": _tri_stage, "step": _step, "triangular": _triangular}


def check_lr_scheduler(cfg) -> None:
    """Refuse ``cfg.lr_scheduler`` settings fairseq's scheduler cannot run with ``cfg.optimization``."""
    scheduler = cfg.get("lr_scheduler")
    name = getattr(scheduler, "_name", None)
    if name in ONE_RATE_ONLY and len(cfg.optimization.lr) > 1:
        raise SRUppUserError("--lr {} gives one rate per epoch, which --lr-scheduler {} does not take: give one --lr "
                             "(or --lr-scheduler fixed for a rate per epoch)".format(
                                 ",".join(map(str, cfg.optimization.lr)), name))
    if name in CHECKS:
        CHECKS[name](scheduler, cfg.optimization)
