"""Nine fairseq 0.12 behaviours that break or slow everyday use of this plugin, wrapped at import.

1. ``--log-file``: fairseq's ``progress_bar()`` adds a new ``FileHandler`` for the log file each time it
   is called — once per epoch and once per validation — so ``train.log`` repeats every line once more
   per epoch. The wrapper passes the file on only while no handler writes to it yet.

2. Generation with ``srupp_lm`` (only: other models' generation is left alone):

   * ``SequenceGenerator`` with beam > 1 crashes (``AssertionError: 200 < 200``) when a forced
     prefix starts with ``</s>``, as ``fairseq-generate --prefix-size`` forces for an empty line:
     at step 0 only the first beam is searched, so the sentence can finish one hypothesis, never
     ``beam`` of them. Such rows (the sentence ended before anything could be continued) are
     decoded with one plain beam, the rest of the batch with the requested beam and search.
   * ``--max-len-b`` (``max_len_b``) counts the prompt: a prompt already as long as the limit gets
     no continuation. One warning says so, with the numbers.
   * prompt symbols outside the dictionary become ``<unk>`` silently: one warning with the count.

3. ``--bf16``: fairseq's argument post-processing sets ``--tpu`` whenever ``--bf16`` is given, so
   bf16 training on a GPU (or CPU) asks torch_xla for a device and fails with ``'NoneType' object
   has no attribute 'xla_device'``. Where torch_xla is not installed no TPU can be meant, so the
   wrapper of ``call_main`` clears ``common.tpu`` before any trainer is built.

4. ``--required-batch-size-multiple`` (default 8): ``data_utils.batch_by_size`` drops the last batch
   when its size is not a multiple of it (fairseq issue #5036), so ``fairseq-train`` validated on
   part of the valid split with ``--task language_modeling`` (e.g. 16 blocks of 21 at batch size 8)
   and never trained on the last blocks of an epoch. The wrapper hands that batch back; every other
   batch is left as fairseq made it. (``srupp_language_modeling`` batches its streams itself.) A sample
   longer than ``--max-tokens`` (fairseq's ``AssertionError`` from its Cython batcher) is named with the
   size that fits.

5. User mistakes that fairseq reports as a traceback (an ``AssertionError``, ``OSError: [Errno 22]``,
   ``KeyError: 101``, a ``RuntimeError`` mid-search) or not at all:

   * before ``fairseq-train`` starts, the wrapper of ``call_main`` runs
     :func:`fairseq_srupp.train_checks.check_train_config`. ``fairseq-hydra-train`` loads the plugin
     only inside ``fairseq_cli.train.main``: there the wrapper of its ``add_defaults`` runs it, and
     Hydra re-raises a user error instead of printing it as a traceback, its flags named with their
     Hydra keys;
   * before ``fairseq-interactive``, ``fairseq-eval-lm`` and ``fairseq-validate`` (``call_main``) and
     ``fairseq-generate`` (a wrapper of its ``main``), :mod:`fairseq_srupp.inference_checks`; before
     ``fairseq-preprocess`` (a wrapper of its ``main``), :mod:`fairseq_srupp.preprocess_checks`;
   * fairseq-validate without ``--task`` fails inside fairseq's argument parser (``KeyError: None``), before
     any check can run: the excepthook recognises that traceback and prints the task to give;
   * the checkpoint loaders name a missing, truncated or non-checkpoint file, and a ``--model-overrides``
     that changes the sizes the checkpoint's parameters were trained with (rather than advising a new
     training run);
   * a model whose config reads a field its task lacks (``--arch transformer_lm --task
     srupp_language_modeling``: an OmegaConf ``InterpolationKeyError``) is named with the task it needs.

   Each raises :class:`~fairseq_srupp.errors.SRUppUserError` (one ``error:`` line); a checkpoint that
   fails to load although its file is intact keeps fairseq's own error.

6. ``--fp16`` / ``--bf16``: fairseq's ``FP16Optimizer`` copies, zeroes and (without apex) norms the gradients
   and copies the parameters back one parameter at a time: :mod:`fairseq_srupp.optim.batched_update`
   does each pass as one multi-tensor call (``FAIRSEQ_SRUPP_UPDATE=fairseq`` keeps fairseq's loops).

7. ``--lr-scheduler polynomial_decay`` without ``--total-num-update``: its config defaults to ``--max-update``
   (an interpolation), which fairseq's argument parser turns into None, and Hydra refuses None for that
   float, so every such command line ended in a ``ConfigCompositionException``. The wrapper of
   ``convert_namespace_to_omegaconf`` gives it ``--max-update``, as the config means.

8. ``--diverse-beam-groups`` (fairseq-fixed's cumulative diversity, fairseq PR #5069): ``DiverseBeamSearch``
   sizes its overlap counts for the batch (one row per sentence) but indexes them by the sentences' dataset
   ids: a batch holding an id beyond its size (every batch after the first) ended in an ``IndexError``, and
   one whose ids were not 0, 1, 2, ... in order read other sentences' counts. The wrapper of its ``step``
   turns the ids into rows.

9. Options whose config default is OmegaConf's "missing" placeholder ``???`` (``--lr-scheduler triangular``'s
   ``--max-lr``, the BPEs' model and code files): fairseq gave argparse ``???`` as the default, so leaving one
   out ended in "--max-lr: invalid float value: '???'" (or passed ``???`` on as a file name). The wrapper of
   ``gen_parser_from_dataclass`` marks them required: argparse names the missing option.

The wrapper of ``call_main`` also destroys the process group of a run that returned: fairseq leaves it
to interpreter shutdown, where a gloo rank can abort ("terminate called without an active exception").
"""
import inspect
import logging
import os
import re
import sys
import zipfile

import torch

from fairseq_srupp.cli_modules import fairseq_cli_module, real_module_name
from fairseq_srupp.errors import (CheckpointMismatchError, SRUppUserError, find_user_error, not_a_file,
                                  recognise_user_error)
from fairseq_srupp.inference_checks import (check_eval_lm_config, check_generation_config, check_validate_config,
                                            missing_encoder_package, missing_validate_task)
from fairseq_srupp.optim.batched_update import install as install_batched_update
from fairseq_srupp.preprocess_checks import check_preprocess_args
from fairseq_srupp.train_checks import check_train_config

logger = logging.getLogger(__name__)

_installed = False
_warned = set()
_train_checked = False  # check_train_config ran in this process (from the wrapper of call_main)
_hydra_cfg = None  # the configuration of a fairseq-hydra-train run, once the plugin has seen it


def _warn_once(key, message, *args):
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *args)


# ----------------------------------------------------------------------------------- --log-file
def _writes_to(log, path) -> bool:
    target = os.path.abspath(path)
    return any(isinstance(h, logging.FileHandler) and h.baseFilename == target for h in log.handlers)


def _wrap_progress_bar(module):
    original = module.progress_bar
    signature = inspect.signature(original)

    def progress_bar(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        path = bound.arguments.get("log_file")
        if path is not None and _writes_to(module.logger, path):
            bound.arguments["log_file"] = None
        return original(*bound.args, **bound.kwargs)

    progress_bar.__doc__ = original.__doc__
    module.progress_bar = progress_bar


# ----------------------------------------------------------------------------------- generation
def _serves_srupp(generator) -> bool:
    from fairseq_srupp.models.srupp_lm import SRUppLanguageModel

    return any(isinstance(m, SRUppLanguageModel) for m in getattr(generator.model, "models", []))


def _rows(sample, rows, batch_size):
    """The sub-batch ``rows`` of a sample: every tensor whose first dimension is the batch."""
    if isinstance(sample, dict):
        return {k: _rows(v, rows, batch_size) for k, v in sample.items()}
    if torch.is_tensor(sample) and sample.dim() > 0 and sample.shape[0] == batch_size:
        return sample[rows]
    return sample


def _check_prompts(generator, sample, prefix_tokens):
    """Warn when a prompt holds <unk> or already reaches the length limit (see the module docstring)."""
    src_tokens = sample["net_input"]["src_tokens"]
    max_len = min(int(generator.max_len_a * src_tokens.size(1) + generator.max_len_b), generator.max_len - 1)
    unknown = int(prefix_tokens.eq(generator.unk).sum())
    if unknown:
        _warn_once("unk", "%d symbol(s) of the prompt are not in the model's dictionary and are read as <unk>",
                   unknown)
    # Rows whose prefix holds </s> ended inside it: nothing was to be continued there.
    open_rows = ~prefix_tokens.eq(generator.eos).any(dim=1)
    lengths = prefix_tokens.ne(generator.pad).sum(dim=1)[open_rows]
    if lengths.numel() and int(lengths.max()) >= max_len:
        _warn_once("max_len", "a prompt of %d tokens reaches the length limit of %d tokens, so it gets no "
                   "continuation: the limit (--max-len-b, max_len_b=) counts the prompt; raise it above the "
                   "prompt's length", int(lengths.max()), max_len)


def _wrap_generate(cls):
    original = cls._generate

    def _generate(self, sample, prefix_tokens=None, constraints=None, bos_token=None):
        if prefix_tokens is None or prefix_tokens.size(1) == 0 or not _serves_srupp(self):
            return original(self, sample, prefix_tokens=prefix_tokens, constraints=constraints, bos_token=bos_token)
        _check_prompts(self, sample, prefix_tokens)
        ended = prefix_tokens[:, 0].eq(self.eos)
        if self.beam_size == 1 or constraints is not None or not ended.any():
            return original(self, sample, prefix_tokens=prefix_tokens, constraints=constraints, bos_token=bos_token)
        from fairseq.search import BeamSearch

        batch_size = prefix_tokens.size(0)
        results = [None] * batch_size
        beam_size, searcher = self.beam_size, self.search
        # the ended rows with one plain beam (a diverse beam search needs a beam its groups divide)
        passes = ((ended.nonzero().view(-1), 1, BeamSearch(self.tgt_dict)),
                  ((~ended).nonzero().view(-1), beam_size, searcher))
        try:
            for rows, beam, search in passes:
                if rows.numel() == 0:
                    continue
                self.beam_size, self.search = beam, search
                hypos = original(self, _rows(sample, rows, batch_size), prefix_tokens=prefix_tokens[rows],
                                 bos_token=bos_token)
                for row, row_hypos in zip(rows.tolist(), hypos):
                    results[row] = row_hypos
        finally:
            self.beam_size, self.search = beam_size, searcher
        return results

    _generate.__doc__ = original.__doc__
    cls._generate = _generate


def _wrap_diverse_beam_search(cls):
    original = cls.step

    def step(self, step, lprobs, scores, prev_output_tokens=None, original_batch_idxs=None):
        if original_batch_idxs is not None and hasattr(self, "group_overlap"):
            if step == 0:  # group_overlap gets one row per sentence of this batch, in this order
                self._sentence_ids = original_batch_idxs.clone()
            # later steps name the sentences still searched by their ids: their rows in group_overlap
            original_batch_idxs = original_batch_idxs.unsqueeze(1).eq(self._sentence_ids.unsqueeze(0)).int().argmax(1)
        return original(self, step, lprobs, scores, prev_output_tokens, original_batch_idxs)

    step.__doc__, step.__wrapped__ = original.__doc__, original
    cls.step = step


# ----------------------------------------------------------------------------------- --bf16 off TPUs
def _torch_xla_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch_xla") is not None


def _wrap_call_main(module):
    original = module.call_main

    def call_main(cfg, main, **kwargs):
        common = getattr(cfg, "common", None)
        if common is not None and common.bf16 and common.tpu and not _torch_xla_installed():
            common.tpu = False  # set by --bf16 alone; without torch_xla there is no TPU to use
        global _train_checked
        command = real_module_name(getattr(main, "__module__", None))  # python -m fairseq_cli.X: __main__
        if command == "fairseq_cli.train":  # fairseq-hydra-train's pre_main too
            check_train_config(cfg)
            _train_checked = True
        elif command == "fairseq_cli.interactive":
            check_generation_config(cfg, "fairseq-interactive")
        elif command == "fairseq_cli.eval_lm":
            check_eval_lm_config(cfg)
        elif command == "fairseq_cli.validate":
            check_validate_config(cfg)
        result = original(cfg, main, **kwargs)
        # fairseq leaves its process group to interpreter shutdown, where a gloo rank can abort with
        # "terminate called without an active exception" (pytorch issue #190489). Every rank got here
        # past fairseq's final barrier; after an error the others may be mid-collective, so not then.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        return result

    call_main.__doc__ = original.__doc__
    module.call_main = call_main


def _wrap_train_add_defaults(module):
    # fairseq-hydra-train reaches call_main before it imports the plugin (fairseq_cli.train.main imports
    # common.user_dir, then calls add_defaults): check there, before fairseq's asserts and the data
    original = module.add_defaults

    def add_defaults(cfg):
        global _hydra_cfg
        original(cfg)
        if not _train_checked:
            _hydra_cfg = cfg  # the errors below name flags; _hydra_keys finds their keys in it
            check_train_config(cfg)

    add_defaults.__doc__, add_defaults.__wrapped__ = original.__doc__, original
    module.add_defaults = add_defaults


def _wrap_hydra_error_report(hydra_utils):
    # Hydra prints an exception from the job as a trimmed traceback unless HYDRA_FULL_ERROR is set, in
    # which case it re-raises it; a user error re-raised reaches the plugin's excepthook: one line.
    original = getattr(hydra_utils, "_is_env_set", None)
    if original is None:  # another Hydra: its own report stays
        return

    def _is_env_set(name):
        error = None
        if name == "HYDRA_FULL_ERROR":
            error = find_user_error(sys.exc_info()[1]) or _config_value_error(sys.exc_info()[1])
        if error is None:
            return original(name)
        keys = _hydra_keys(str(error), _hydra_cfg)
        if keys:
            error.args = ("{} (Hydra keys: {})".format(error, keys),)
        return True

    _is_env_set.__wrapped__ = original
    hydra_utils._is_env_set = _is_env_set


def _config_value_error(exc):
    """An OmegaConf ``ValidationError`` (an override of the wrong type, e.g. ``model.hidden_size=abc``) as
    a user error: attached as its cause, so the plugin's excepthook prints one line for it."""
    from omegaconf.errors import ValidationError

    if not isinstance(exc, ValidationError):
        return None
    reason = (getattr(exc, "msg", None) or str(exc)).splitlines()[0]
    key = getattr(exc, "full_key", None)
    keys = _hydra_keys("--" + key.replace("_", "-"), _hydra_cfg) if key else ""
    where = keys.split(" = ")[-1] if keys else key
    exc.__cause__ = SRUppUserError("{}{}: give a value of the option's type".format(
        where + ": " if where else "", reason))
    return exc.__cause__


_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9-]*)")


def _hydra_keys(message: str, cfg) -> str:
    """``--flag = section.key`` for each command-line flag ``message`` names that ``cfg`` has, in order."""
    if cfg is None:
        return ""
    found = []
    for flag in dict.fromkeys(_FLAG.findall(message)):
        field = flag.replace("-", "_")
        section = next((name for name, sub in cfg.items() if hasattr(sub, "keys") and field in sub), None)
        if section is not None:
            found.append("--{} = {}.{}".format(flag, section, field))
    return ", ".join(found)


def _check_before_main(module, check):
    """Make ``module.main(args)`` run ``original(check(args))``: ``check`` refuses bad arguments and returns what
    the command goes on with."""
    original = module.main

    def main(args):
        return original(check(args))

    main.__doc__, main.__wrapped__ = original.__doc__, original
    module.main = main


def _wrap_generate_main(module):
    # fairseq-generate calls its main() directly, not through call_main
    def check(cfg):
        from argparse import Namespace

        if isinstance(cfg, Namespace):
            cfg = module.convert_namespace_to_omegaconf(cfg)  # once: main goes on with it
        check_generation_config(cfg, "fairseq-generate")
        return cfg

    _check_before_main(module, check)


def _wrap_preprocess_main(module):
    # fairseq-preprocess reads its files as it gets to them: check them all before it writes anything
    def check(args):
        check_preprocess_args(args)
        return args

    _check_before_main(module, check)


# ------------------------------------------------------------- a model the task cannot configure
_MISSING_KEY = re.compile(r"Interpolation key '(task\.[^']+)' not found")


_NO_CONFIG = re.compile(r"Could not find '(\w+)/(\w+)'")


def _no_config_error(exc):
    """The line for Hydra's MissingConfigException of a component fairseq registered without a config (its
    --bpe bytes and --bpe characters: they cannot run from fairseq's command line), else None."""
    found = _NO_CONFIG.search(str(exc))
    if found is None:
        return None
    group, name = found.groups()
    hint = (": for the text of a char-level model use --bpe srupp_bytes (UTF-8 bytes <-> byte tokens, newline <-> "
            "</s>)" if group == "bpe" else ": choose another --{}".format(group))
    return SRUppUserError("--{} {} cannot run from fairseq's command line: fairseq registers it without a config, "
                          "which its Hydra set-up needs{}".format(group.replace("_", "-"), name, hint))


def _wrap_convert_namespace(utils):
    from hydra.errors import MissingConfigException
    from omegaconf.errors import InterpolationKeyError

    original = utils.convert_namespace_to_omegaconf

    def convert_namespace_to_omegaconf(args):
        if getattr(args, "lr_scheduler", None) == "polynomial_decay" and getattr(args, "total_num_update", 0) is None:
            # its config's default is --max-update (an interpolation), which fairseq's argparse drops to None, and
            # Hydra refuses None for a float: any --lr-scheduler polynomial_decay without --total-num-update failed
            args.total_num_update = getattr(args, "max_update", 0)
        try:
            return original(args)
        except MissingConfigException as exc:
            error = _no_config_error(exc)
            if error is None:
                raise
            raise error from exc
        except InterpolationKeyError as exc:
            missing = _MISSING_KEY.search(str(exc))
            arch, task = getattr(args, "arch", None), getattr(args, "task", None)
            if missing is None or arch is None or task is None:
                raise
            hint = ("srupp_language_modeling trains models that carry their state (--arch srupp_lm...); train {} with "
                    "--task language_modeling".format(arch) if task == "srupp_language_modeling"
                    else "choose a task this model is made for, e.g. --task language_modeling")
            raise SRUppUserError("--arch {} takes {} from its task, which --task {} does not have: {}".format(
                arch, missing.group(1), task, hint)) from exc

    _install_everywhere(utils, original, convert_namespace_to_omegaconf)


def _install_everywhere(module, original, wrapper):
    """Put ``wrapper`` in place of ``original`` in ``module`` and in the fairseq modules (the command-line tools
    among them) that imported it by name before the plugin was loaded."""
    wrapper.__doc__, wrapper.__wrapped__ = original.__doc__, original
    setattr(module, original.__name__, wrapper)
    for name, mod in list(sys.modules.items()):
        if name.startswith(("fairseq_cli.", "fairseq.")) and getattr(mod, original.__name__, None) is original:
            setattr(mod, original.__name__, wrapper)


# ------------------------------------------------------------------ options a config requires
def _wrap_gen_parser(utils):
    original = utils.gen_parser_from_dataclass

    def gen_parser_from_dataclass(parser, *args, **kwargs):
        added = len(parser._actions)
        original(parser, *args, **kwargs)
        for action in parser._actions[added:]:
            # OmegaConf's "missing" placeholder as a field's default: argparse took it for a value and failed to
            # convert it ("--max-lr: invalid float value: '???'") or passed the string on
            if isinstance(action.default, str) and action.default == "???":
                action.required, action.default = True, None

    _install_everywhere(utils, original, gen_parser_from_dataclass)


# ----------------------------------------------------------------------- the dropped last batch
def _wrap_batch_by_size(module):
    import numpy as np

    original = module.batch_by_size

    signature = inspect.signature(original)

    def batch_by_size(indices, *args, **kwargs):
        if not isinstance(indices, np.ndarray):
            indices = np.fromiter(indices, dtype=np.int64, count=-1)
        try:
            batches = original(indices, *args, **kwargs)
        except IndexError as exc:  # fairseq indexes the last of no batches
            if len(indices):
                raise
            raise SRUppUserError(
                "no sample left to batch: fairseq skipped every one as too long (longer than --max-tokens {} or the "
                "model's positions; see its warning above): raise --max-tokens or lower --tokens-per-sample".format(
                    signature.bind(indices, *args, **kwargs).arguments.get("max_tokens"))) from exc
        except AssertionError as exc:
            if "should not exceed max_tokens" not in str(exc):
                raise
            a = signature.bind(indices, *args, **kwargs).arguments
            vec = a.get("num_tokens_vec")
            longest = int(np.max(vec)) if vec is not None else max(int(a["num_tokens_fn"](i)) for i in indices)
            raise SRUppUserError(
                "a sample has {} tokens, more than --max-tokens {} allows in a batch: raise --max-tokens (or "
                "--max-tokens-valid for validation) to at least {}, or lower --tokens-per-sample".format(
                    longest, a["max_tokens"], longest)) from exc
        kept = sum(len(b) for b in batches)
        if kept < len(indices):  # batches are consecutive slices of indices: the tail was dropped
            batches = list(batches) + [indices[kept:]]
        return batches

    batch_by_size.__doc__ = original.__doc__
    batch_by_size.__wrapped__ = original
    module.batch_by_size = batch_by_size


# ------------------------------------------------------------------ unreadable checkpoints
def _broken_checkpoint(path) -> bool:
    """True when ``path`` is neither a complete torch.save archive nor a legacy pickled checkpoint."""
    with open(path, "rb") as f:
        head = f.read(2)
    return head != b"\x80\x02" and not zipfile.is_zipfile(path)  # legacy (torch < 1.6) files start \x80\x02


# srupp_lm settings that decide which parameters exist and their shapes (dropouts, eval_window, ... do not)
_SHAPING_SETTINGS = ("hidden_size", "proj_size", "num_layers", "attention_every_n_layers", "no_layer_norm",
                     "no_attn_layer_norm", "adaptive_softmax_cutoff", "adaptive_embed_dim", "adaptive_div_value",
                     "untie_adaptive_proj")


def _changed_model_settings(path, overrides):
    """``key (old -> new)`` for each of ``overrides`` that changes a setting of the model saved in ``path``
    that shapes its parameters (any changed setting if none of those is)."""
    try:
        # mmap: only the pickled structure is read, not the tensors
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        saved = state["cfg"]["model"]
    except Exception:  # another kind of checkpoint: nothing to compare
        return []
    changed = [key for key, value in overrides.items() if key in saved and saved[key] != value]
    shaping = [key for key in changed if key in _SHAPING_SETTINGS] or changed
    return ["{} ({} -> {})".format(key, saved[key], overrides[key]) for key in shaping]


def _wrap_checkpoint_loaders(module):
    load_to_cpu, load_ensemble = module.load_checkpoint_to_cpu, module.load_model_ensemble_and_task
    from fairseq.file_io import PathManager

    def load_checkpoint_to_cpu(path, *args, **kwargs):
        local = not PathManager.path_requires_pathmanager(path)
        if local and not os.path.isfile(path):
            raise SRUppUserError("checkpoint {} {}".format(path, not_a_file(path)))
        try:
            return load_to_cpu(path, *args, **kwargs)
        except Exception as exc:
            if not local:
                raise
            if _broken_checkpoint(path):
                raise SRUppUserError("{} is not a complete PyTorch checkpoint ({} bytes; truncated, still being "
                                     "written, or another kind of file): give a checkpoint_*.pt written by "
                                     "fairseq-train".format(path, os.path.getsize(path))) from exc
            # fairseq's upgrade of old checkpoints fails (KeyError) on a state dict it did not write
            from fairseq_srupp.models.srupp_lm import checkpoint_model_name

            checkpoint_model_name(path)  # SRUppUserError unless it is a fairseq checkpoint
            raise

    signature = inspect.signature(load_ensemble)

    def load_model_ensemble_and_task(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        firsts = [module.get_maybe_sharded_checkpoint_filename(name, a["suffix"], 0, a["num_shards"])
                  for name in (a["filenames"] if a["state"] is None else ())]
        for first in firsts:
            if not PathManager.path_requires_pathmanager(first) and not os.path.isfile(first):
                raise SRUppUserError("checkpoint {} {} (--path)".format(first, not_a_file(first)))
        try:
            return load_ensemble(*args, **kwargs)
        except CheckpointMismatchError as exc:
            if not a["arg_overrides"]:
                raise
            changed = [c for path in firsts[:1] for c in _changed_model_settings(path, a["arg_overrides"])]
            if not changed:
                raise
            raise SRUppUserError(
                "--model-overrides changes {}, which the checkpoint's parameters were trained with, so they do not "
                "fit: drop {} from --model-overrides (settings such as eval_window or dropout can be "
                "overridden)".format(", ".join(changed), "it" if len(changed) == 1 else "them")) from exc

    for wrapper, original in ((load_checkpoint_to_cpu, load_to_cpu), (load_model_ensemble_and_task, load_ensemble)):
        wrapper.__doc__, wrapper.__wrapped__ = original.__doc__, original
        setattr(module, original.__name__, wrapper)


def install() -> None:
    """Apply the wrappers (idempotent)."""
    global _installed
    if _installed:
        return
    from fairseq import checkpoint_utils, search, sequence_generator
    from fairseq.data import data_utils
    from fairseq.dataclass import utils as dataclass_utils
    from fairseq.distributed import utils as distributed_utils
    from fairseq.logging import progress_bar

    _wrap_progress_bar(progress_bar)
    _wrap_generate(sequence_generator.SequenceGenerator)
    _wrap_diverse_beam_search(search.DiverseBeamSearch)
    _wrap_call_main(distributed_utils)
    _wrap_convert_namespace(dataclass_utils)
    _wrap_gen_parser(dataclass_utils)
    if "hydra._internal.utils" in sys.modules:
        _wrap_hydra_error_report(sys.modules["hydra._internal.utils"])
    # the commands' modules, imported by their console scripts or run as `python -m fairseq_cli.X`
    for name, wrap in (("train", _wrap_train_add_defaults), ("generate", _wrap_generate_main),
                       ("preprocess", _wrap_preprocess_main)):
        module = fairseq_cli_module(name)
        if module is not None:
            wrap(module)
    _wrap_batch_by_size(data_utils)
    _wrap_checkpoint_loaders(checkpoint_utils)
    install_batched_update()
    recognise_user_error(missing_validate_task)
    recognise_user_error(missing_encoder_package)
    _installed = True
