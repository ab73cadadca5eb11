"""Configurations fairseq-generate, fairseq-interactive, fairseq-eval-lm and fairseq-validate cannot run,
refused before any checkpoint or data is read.

fairseq reports these as an ``AssertionError`` traceback (``--sampling`` without ``--nbest`` equal to
``--beam``, ``--temperature 0``, fairseq-validate without a batch size), a ``RuntimeError`` from a reshape in
the middle of decoding (``--beam 0``), a ``ValueError`` from its Cython block builder (``--context-window`` not
below ``--tokens-per-sample``), an ``OSError`` (``--results-path`` naming a file, ``--input`` a missing one,
after the model is loaded), a ``SyntaxError`` (a ``--model-overrides`` that is not a dict literal), or not at
all (``--nbest 0`` prints no hypothesis, ``--prefix-size -1`` forces all but the last reference token,
``--max-tokens`` is ignored by ``srupp_language_modeling``, fairseq-interactive ignores ``--lm-path``). The
plugin's wrappers (:mod:`fairseq_srupp.fairseq_fixes`) call :func:`check_generation_config`,
:func:`check_eval_lm_config` and :func:`check_validate_config`; each refusal is an
:class:`~fairseq_srupp.errors.SRUppUserError`: one ``error:`` line. They check any model's command, since the
plugin is loaded only with ``--user-dir``.
"""
import ast
import math
import os
import sys
import traceback

from fairseq_srupp.errors import SRUppUserError, not_a_file
from fairseq_srupp.train_checks import (check_batch_limits, check_lm_data, check_log_interval, check_no_max_tokens,
                                        check_num_workers, check_seed, component_name, not_a_folder)

MODEL_OVERRIDES_EXAMPLE = "--model-overrides \"{'eval_window': 512}\""
# the commands that eval() --model-overrides (the others literal_eval it)
EVALUATES_MODEL_OVERRIDES = ("fairseq-eval-lm", "fairseq-validate")


def _check_path(cfg, command: str):
    if not cfg.common_eval.path:
        raise SRUppUserError("{} needs --path CHECKPOINT (a checkpoint_*.pt written by fairseq-train)".format(command))


def _check_model_overrides(cfg, command: str):
    text = cfg.common_eval.model_overrides
    try:
        overrides = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        syntax = isinstance(exc, SyntaxError)
        if command in EVALUATES_MODEL_OVERRIDES and not syntax:
            return  # these eval() it: an expression such as {'eval_window': 2 ** 9} is allowed there
        raise SRUppUserError("--model-overrides {} is not a Python dict literal ({}): write it as {}".format(
            text, exc.msg if syntax else "not a literal", MODEL_OVERRIDES_EXAMPLE)) from None
    if not isinstance(overrides, dict):
        raise SRUppUserError("--model-overrides {} is a {}, not a dict: write it as {}".format(
            text, type(overrides).__name__, MODEL_OVERRIDES_EXAMPLE))


def _check_search(gen):
    if gen.beam < 1:
        raise SRUppUserError("--beam must be >= 1 (hypotheses kept per sentence; 1 = greedy), got {}".format(gen.beam))
    if not 1 <= gen.nbest <= gen.beam:
        raise SRUppUserError("--nbest must be between 1 and --beam ({}): it is how many of the beam's hypotheses are "
                             "printed, got {}".format(gen.beam, gen.nbest))
    chosen = (("--sampling", gen.sampling), ("--diverse-beam-groups", gen.diverse_beam_groups > 0),
              ("--match-source-len", gen.match_source_len), ("--diversity-rate", gen.diversity_rate > 0))
    strategies = [flag for flag, on in chosen if on]
    if len(strategies) > 1:
        raise SRUppUserError("{} choose different search strategies: give one of them".format(
            " and ".join(strategies)))
    for flag, value in (("--sampling-topk", gen.sampling_topk), ("--sampling-topp", gen.sampling_topp)):
        if value >= 0 and not gen.sampling:
            raise SRUppUserError("{} applies to sampling only: add --sampling (and --beam 1 for one sample)".format(
                flag))
    if gen.sampling and gen.nbest != gen.beam:
        raise SRUppUserError(
            "--sampling draws --beam ({}) samples per input and fairseq needs --nbest ({}) equal to it: add --beam {} "
            "for {} sample(s), or --nbest {}".format(gen.beam, gen.nbest, gen.nbest, gen.nbest, gen.beam))
    if gen.sampling_topk == 0 or gen.sampling_topk < -1:
        raise SRUppUserError("--sampling-topk must be >= 1 (or -1: no limit), got {}".format(gen.sampling_topk))
    if gen.sampling_topp >= 0 and not 0 < gen.sampling_topp <= 1:
        raise SRUppUserError("--sampling-topp must be in (0, 1] (or -1: no limit), got {}".format(gen.sampling_topp))
    if not gen.temperature > 0:
        raise SRUppUserError("--temperature must be > 0 (1 = the model's distribution), got {}".format(gen.temperature))
    # NaN scores: the beam's and the final ranking's order is then arbitrary, silently
    for flag, value, what in (("--lenpen", gen.lenpen, "scores are divided by length ** lenpen; 1 = none"),
                              ("--unkpen", gen.unkpen, "subtracted from <unk>'s log-probability; 0 = none"),
                              ("--diverse-beam-strength", gen.diverse_beam_strength, "with --diverse-beam-groups")):
        if not math.isfinite(value):
            raise SRUppUserError("{} must be a finite number ({}), got {}".format(flag, what, value))


# fairseq's language-modeling tasks, which have no source: translation's options cannot run with them
LANGUAGE_MODELING_TASKS = ("language_modeling", "srupp_language_modeling")


def _check_translation_options(cfg):
    if component_name(cfg.task) not in LANGUAGE_MODELING_TASKS:
        return
    gen = cfg.generation
    # --constraints: the task hands the search no constraints (a TypeError mid-search); --print-alignment: a
    # language model has no source to align to (an IndexError)
    for flag, given in (("--constraints", gen.get("constraints")), ("--print-alignment", gen.get("print_alignment"))):
        if given:
            raise SRUppUserError("{} applies to translation models, not to --task {}: drop it (a language model "
                                 "has no source sentence)".format(flag, component_name(cfg.task)))
    if gen.get("match_source_len"):  # the source is the prompt: one token more, or an AssertionError with a beam
        raise SRUppUserError("--match-source-len makes a translation as long as its source; a language model's source "
                             "is its prompt, so the output would stop a token past it (with --beam above 1 fairseq's "
                             "search fails): drop it and set the length with --max-len-b (which counts the prompt)")
    if gen.get("print_step"):  # fairseq prints hypo["steps"], which only iterative refinement makes (a KeyError)
        raise SRUppUserError("--print-step applies to iterative refinement (non-autoregressive) translation models, "
                             "not to --task {}: drop it".format(component_name(cfg.task)))


def _dictionary_size(cfg):
    """Symbols in the language model's dict.txt (in the first data directory), or None without one."""
    from fairseq.data import Dictionary

    data = getattr(cfg.task, "data", None)
    path = os.path.join(data.split(os.pathsep)[0], "dict.txt") if data else None
    if path is None or not os.path.isfile(path):
        return None
    try:
        return len(Dictionary.load(path))
    except Exception:  # a malformed dict.txt: fairseq's loader reports it
        return None


def _check_topk_fits(cfg):
    # torch's topk fails mid-search ("selected index k out of range") when k exceeds the vocabulary
    topk = cfg.generation.sampling_topk
    size = _dictionary_size(cfg) if topk > 0 else None
    if size is not None and topk > size:
        raise SRUppUserError("--sampling-topk {} is larger than the dictionary ({} symbols): give at most {} (or -1: "
                             "no limit)".format(topk, size, size))


def _check_lengths(gen):
    if gen.prefix_size < 0:
        raise SRUppUserError("--prefix-size must be >= 0 (reference tokens forced as the prompt; 0 = none), got "
                             "{}".format(gen.prefix_size))
    if gen.min_len < 1:
        raise SRUppUserError("--min-len must be >= 1, got {}".format(gen.min_len))
    if gen.max_len_a < 0:  # fairseq's AssertionError "min_len cannot be larger than max_len" mid-search
        raise SRUppUserError("--max-len-a must be >= 0 (output tokens allowed per source token, for a language "
                             "model per prompt token, besides --max-len-b), got {}".format(gen.max_len_a))
    if not gen.match_source_len and gen.max_len_a == 0 and gen.max_len_b < gen.min_len:
        raise SRUppUserError("--max-len-b {} is below --min-len {}: no output length fits (for a language model "
                             "--max-len-b counts the prompt too)".format(gen.max_len_b, gen.min_len))


def _check_lm_fusion(gen, command: str):
    # fairseq-generate adds --lm-weight times a second language model's log-probabilities (shallow fusion);
    # fairseq-interactive never reads --lm-path, and without --lm-path nothing reads --lm-weight
    if gen.lm_path is not None and command == "fairseq-interactive":
        raise SRUppUserError("--lm-path applies to fairseq-generate only (fairseq-interactive does not load it): "
                             "drop it, or run fairseq-generate")
    if gen.lm_path is None and gen.lm_weight != 0:
        raise SRUppUserError("--lm-weight {} needs --lm-path: give the checkpoint of the language model to fuse, "
                             "or drop --lm-weight".format(gen.lm_weight))
    if gen.lm_path is not None and not os.path.isfile(gen.lm_path):  # else read as a --path checkpoint, after --path
        raise SRUppUserError("--lm-path {} {}: give the checkpoint of a language model trained with the same "
                             "dict.txt".format(gen.lm_path, not_a_file(gen.lm_path)))


def _check_input(path):
    # fairseq-interactive opens it only after loading the model
    if path != "-" and not os.path.isfile(path):
        raise SRUppUserError("--input {} {}: give a text file of prompts, one per line, or - (the default) for "
                             "standard input".format(path, not_a_file(path)))


def _check_results_path(path):
    why = not_a_folder(path) if path is not None else None
    if why is not None:
        raise SRUppUserError("--results-path {} {}: give a folder (it is created if missing; the hypotheses go to "
                             "generate-SPLIT.txt in it)".format(path, why))


def check_generation_config(cfg, command: str) -> None:
    """Refuse a fairseq-generate / fairseq-interactive configuration (``command`` names the tool) whose
    search settings fairseq cannot run or would silently ignore."""
    _check_path(cfg, command)
    _check_model_overrides(cfg, command)
    check_batch_limits(cfg.dataset, cfg.task)
    check_num_workers(cfg.dataset)
    check_seed(cfg.common)
    check_log_interval(cfg.common)  # fairseq-generate's progress bar takes the batch number modulo it
    gen = cfg.generation
    _check_search(gen)
    _check_lengths(gen)
    _check_lm_fusion(gen, command)
    _check_translation_options(cfg)
    _check_topk_fits(cfg)
    if command == "fairseq-interactive":
        _check_input(cfg.interactive.input)
        buffer_size = max(cfg.interactive.buffer_size, 1)  # fairseq reads 0 (the default) as 1
        if cfg.dataset.batch_size and cfg.dataset.batch_size > buffer_size:
            raise SRUppUserError("--batch-size {} is larger than --buffer-size {}: fairseq-interactive batches the "
                                 "lines it has buffered; give --buffer-size {} too".format(
                                     cfg.dataset.batch_size, buffer_size, cfg.dataset.batch_size))
    else:
        _check_results_path(cfg.common_eval.results_path)
        if gen.replace_unk is not None and cfg.dataset.dataset_impl != "raw":
            raise SRUppUserError("--replace-unk needs the raw text (--dataset-impl raw) to copy words from")
        check_lm_data(cfg, [cfg.dataset.gen_subset])


def check_eval_lm_config(cfg) -> None:
    """Refuse a fairseq-eval-lm configuration that fails after loading, or whose ``--context-window``
    would be ignored."""
    from fairseq_srupp.tasks.srupp_language_modeling import CONTEXT_WINDOW_UNSUPPORTED

    _check_path(cfg, "fairseq-eval-lm")
    _check_model_overrides(cfg, "fairseq-eval-lm")
    check_batch_limits(cfg.dataset, cfg.task)
    check_num_workers(cfg.dataset)
    check_no_max_tokens(cfg.dataset, cfg.task)
    if cfg.eval_lm.softmax_batch < 0:  # fairseq's SequenceScorer asserts it (a traceback); 0 means no limit
        raise SRUppUserError("--softmax-batch must be >= 0 (positions per softmax call; 0: all at once), got "
                             "{}".format(cfg.eval_lm.softmax_batch))
    window = cfg.eval_lm.context_window
    if window < 0:
        raise SRUppUserError("--context-window must be >= 0 (0 = score independent blocks), got {}".format(window))
    if window > 0 and component_name(cfg.task) == "srupp_language_modeling":
        raise SRUppUserError(CONTEXT_WINDOW_UNSUPPORTED)
    tokens_per_sample = getattr(cfg.task, "tokens_per_sample", None)
    if window > 0 and tokens_per_sample is not None and window >= tokens_per_sample:
        raise SRUppUserError(
            "--context-window {} must be below --tokens-per-sample {}: each block scores --tokens-per-sample minus "
            "--context-window new tokens after that many of context".format(window, tokens_per_sample))
    check_lm_data(cfg, [cfg.dataset.gen_subset])


def check_validate_config(cfg) -> None:
    """Refuse a fairseq-validate configuration that fails after loading (an ``AssertionError`` without a batch
    size, a ``FileNotFoundError`` for a missing split) or whose batch limits fairseq would read as none."""
    _check_path(cfg, "fairseq-validate")
    _check_model_overrides(cfg, "fairseq-validate")
    check_batch_limits(cfg.dataset, cfg.task)
    check_no_max_tokens(cfg.dataset, cfg.task)
    if cfg.dataset.batch_size is None and cfg.dataset.max_tokens is None:
        raise SRUppUserError("fairseq-validate needs --batch-size (sentences per batch) or --max-tokens (tokens per "
                             "batch)")
    check_num_workers(cfg.dataset)
    check_seed(cfg.common)
    check_log_interval(cfg.common)
    # fairseq-validate evaluates with the checkpoint's own task: --task only chooses which options parse (and
    # which of the checks above apply), so another task's options would be ignored
    try:
        trained = _checkpoint_task(cfg.common_eval.path)
    except Exception:  # the checkpoint loader names what is wrong with the file
        trained = None
    given = component_name(cfg.task)
    if trained is not None and given != trained:
        raise SRUppUserError("--task {} is not the task {} was trained with: fairseq-validate evaluates with that one, "
                             "so give --task {}".format(given, cfg.common_eval.path, trained))
    check_lm_data(cfg, [s for s in cfg.dataset.valid_subset.split(",") if s])


def _checkpoint_task(path):
    """The task the checkpoint at ``path`` was trained with, or None where ``path`` is not one file."""
    if not path or not os.path.isfile(path):
        return None
    import torch

    state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)  # the pickled structure only
    return state["cfg"]["task"]["_name"]


def _path_in(argv):
    """The last ``--path`` of a command line, or None."""
    paths = [a for i, a in enumerate(argv[1:]) if argv[i] == "--path"] + [
        a.split("=", 1)[1] for a in argv if a.startswith("--path=")]
    return paths[-1] if paths else None


def _encoder_flag(module: str):
    """``--bpe NAME`` / ``--tokenizer NAME`` of the fairseq component defined in ``module``, or None."""
    from fairseq.data.encoders import BPE_REGISTRY, TOKENIZER_REGISTRY

    for flag, registry in (("--bpe", BPE_REGISTRY), ("--tokenizer", TOKENIZER_REGISTRY)):
        for name, cls in registry.items():
            if getattr(cls, "__module__", None) == module:
                return "{} {}".format(flag, name)
    return None


def missing_encoder_package(exc):
    """fairseq imports a --bpe or --tokenizer component's package only when a command builds it: one not
    installed ends in an ImportError traceback ("Please install X with: pip install X"; gpt2's first use
    downloads its vocabulary with ``requests``). The error line naming the flag, else None."""
    if not isinstance(exc, ImportError):
        return None
    encoders = os.path.join("fairseq", "data", "encoders") + os.sep
    inside = [f.filename for f in traceback.extract_tb(exc.__traceback__) if encoders in f.filename]
    if not inside:
        return None
    flag = _encoder_flag("fairseq.data.encoders." + os.path.splitext(os.path.basename(inside[-1]))[0])
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        install = "a Python package it imports is not installed: pip install {}".format(exc.name)
    else:
        install = str(exc).strip().rstrip(".")
    return SRUppUserError("{}: {}".format(flag or "the --bpe / --tokenizer given", install))


def missing_validate_task(exc):
    """fairseq-validate has no default ``--task``: without one, fairseq's argument parser fails with
    ``KeyError: None`` before the plugin's checks can run. The error line for that traceback, else None."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not (isinstance(exc, KeyError) and exc.args == (None,) and frames and frames[-1].name == "parse_args_and_arch"
            and frames[-1].filename.endswith(os.path.join("fairseq", "options.py"))):
        return None
    try:
        task = _checkpoint_task(_path_in(sys.argv))
    except Exception:  # not a readable checkpoint: the generic advice
        task = None
    return SRUppUserError("fairseq-validate needs --task: give the task the checkpoint was trained with ({})".format(
        "--task {}".format(task) if task else "--task language_modeling or --task srupp_language_modeling"))
