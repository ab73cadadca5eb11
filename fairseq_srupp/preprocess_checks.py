"""fairseq-preprocess arguments it fails on with a traceback, refused in one line before it writes anything.

fairseq's ``preprocess.main`` reads every text file it is given only once it gets to it, so a missing
``--validpref`` file ended in a ``FileNotFoundError`` after the training split was binarized; it asserts
``--trainpref`` without ``--srcdict``, raises ``FileExistsError`` for the ``dict.txt`` a previous run left in
``--destdir``, and divides by ``--workers`` 0. The plugin's wrapper of that ``main``
(:mod:`fairseq_srupp.fairseq_fixes`) calls :func:`check_preprocess_args` first.
"""
import os

from fairseq_srupp.errors import SRUppUserError


def _text_file(prefix: str, lang) -> str:
    """The file fairseq-preprocess reads for ``prefix`` (``PREFIX.LANG``, or ``PREFIX`` itself without a language)."""
    return "{}{}".format(prefix, "." + lang if lang is not None else "")


def _languages(args):
    return [args.source_lang] if args.only_source else [args.source_lang, args.target_lang]


def _check_text_files(args):
    for flag, key in (("--trainpref", "trainpref"), ("--validpref", "validpref"), ("--testpref", "testpref")):
        prefixes = getattr(args, key, None)
        for prefix in (prefixes.split(",") if prefixes else []):
            for lang in _languages(args):
                path = _text_file(prefix, lang)
                if os.path.isdir(path):
                    raise SRUppUserError("{} {}: {} is a folder: give the text file's path (without .LANG when "
                                         "--source-lang is given)".format(flag, prefixes, path))
                if not os.path.isfile(path):
                    raise SRUppUserError("{} {}: {} does not exist{}".format(
                        flag, prefixes, path, "" if lang is None else " (with --source-lang L, fairseq reads PREFIX.L)"))


def _check_dictionaries(args):
    for flag, key in (("--srcdict", "srcdict"), ("--tgtdict", "tgtdict")):
        path = getattr(args, key, None)
        if path and not os.path.isfile(path):
            raise SRUppUserError("{} {} does not exist: give the dict.txt of the data to match".format(flag, path))
    if not args.trainpref and not args.srcdict and not (args.joined_dictionary and args.tgtdict):
        raise SRUppUserError("give --trainpref (the text the dictionary is built from) or --srcdict (an existing "
                             "dict.txt)")
    # fairseq refuses to overwrite a dictionary a previous run left (FileExistsError); the binarized splits
    # next to it were made with it
    sides = [("--srcdict", args.source_lang, args.srcdict)]
    if not args.only_source:
        sides.append(("--tgtdict", args.target_lang, args.tgtdict))
    for flag, lang, given in sides:
        existing = os.path.join(args.destdir, "dict.{}.txt".format(lang) if lang is not None else "dict.txt")
        if not given and os.path.exists(existing):
            raise SRUppUserError("{} exists already (from an earlier run) and fairseq-preprocess will not overwrite it: "
                                 "give another --destdir, delete that folder's dictionary and splits, or reuse it "
                                 "with {} {}".format(existing, flag, existing))


def check_preprocess_args(args) -> None:
    """Refuse fairseq-preprocess arguments (its argparse Namespace) it would fail on part-way."""
    if args.workers < 1:
        raise SRUppUserError("--workers must be >= 1 (processes that binarize), got {}".format(args.workers))
    if os.path.exists(args.destdir) and not os.path.isdir(args.destdir):
        raise SRUppUserError("--destdir {} is a file: give a folder for the binarized data".format(args.destdir))
    _check_dictionaries(args)
    _check_text_files(args)
