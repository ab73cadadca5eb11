"""Command-line helpers shared by the data scripts, the demo and the benchmarks.

* argparse types: a bad size, count or list ends in argparse's ``error:`` line naming the flag,
  before anything is built, trained or written (instead of a traceback from deep inside the run);
* :func:`child_error_line`: the line that says why a fairseq child process failed, for a one-line
  report of that failure.
"""
import argparse
import math
import re


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected an integer >= {}, got {!r}".format(minimum, text))
    if value < minimum:
        raise argparse.ArgumentTypeError("must be >= {}, got {}".format(minimum, value))
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number > 0, got {!r}".format(text))
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError("must be a finite number > 0, got {!r}".format(text))
    return value


def int_list(minimum: int):
    """argparse type: comma-separated integers, each >= ``minimum``, as a sorted list without repeats."""

    def parse(text: str):
        try:
            values = sorted({int(v) for v in text.split(",") if v.strip()})
        except ValueError:
            values = []
        if not values or values[0] < minimum:
            raise argparse.ArgumentTypeError("expected comma-separated integers >= {}, got {!r}".format(minimum, text))
        return values

    parse.__name__ = "int_list"  # argparse names the type in some messages
    return parse


def positive_int_fields(fields: str):
    """argparse type: ``len(fields.split(","))`` positive integers separated by commas (e.g. ``fields``
    "hidden,proj,layers" takes "256,128,4"). Returns the text itself, checked: the benchmarks split it
    where they build the model, as callers that pass their own text do."""
    names = fields.split(",")

    def check(text: str) -> str:
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            values = []
        if len(values) != len(names) or min(values) < 1:
            raise argparse.ArgumentTypeError("expected {}: {} positive integers separated by commas, got {!r}".format(
                fields, len(names), text))
        return text

    check.__name__ = "positive_int_fields"
    return check


def int_fields(text: str):
    """The integers of a text :func:`positive_int_fields` checked."""
    return tuple(int(v) for v in text.split(","))


def transformer_heads_problem(text: str):
    """Why a checked ``--transformer`` dim,ffn,layers,heads cannot be built (its heads do not divide its
    dimension), for ``parser.error``; None when it can."""
    dim, _, _, heads = int_fields(text)
    if dim % heads:
        return "--transformer {}: the heads ({}) must divide the dimension ({})".format(text, heads, dim)
    return None


# What a failing fairseq command prints last about its failure: this plugin's one line ("error: ..."),
# argparse's ("train.py: error: ..."), or the last line of a Python traceback ("ValueError: ...").
ERROR_LINE = re.compile(r"^(?:\S+: )?error: |^[\w.]*(?:Error|Exception)(?::|$)")


def child_error_line(lines):
    """The last line of ``lines`` (a child process's output) that says why it failed, without a leading
    "error: " (the report it goes into says that already); None if no line does."""
    found = None
    for line in lines:
        line = line.strip()
        if ERROR_LINE.search(line):
            found = line[len("error: "):] if line.startswith("error: ") else line
    return found
