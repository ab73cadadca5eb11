"""``fairseq-train`` that logs every number with 10 significant digits instead of fairseq's
3 decimals, so tests can compare losses to 1e-6. Run as ``python full_precision_train.py ARGS``;
a leading ``--start-method spawn`` sets multiprocessing's start method first (DataLoader workers
then receive the dataset pickled, as on macOS and Python >= 3.14)."""
import multiprocessing
import sys
from numbers import Number

from fairseq_cli.train import cli_main  # isort: skip  (first: it sets fairseq's log format up)
import fairseq.logging.meters as meters  # isort: skip
import fairseq.logging.progress_bar as progress_bar  # isort: skip


def _no_round(number, ndigits):
    return number.item() if hasattr(number, "item") else number


_format_stat = progress_bar.format_stat


def _format_precisely(stat):
    if isinstance(stat, Number) and not isinstance(stat, bool):
        return "{:.10g}".format(stat)
    if isinstance(stat, meters.AverageMeter):
        return "{:.10g}".format(stat.avg)
    return _format_stat(stat)


meters.safe_round = _no_round
progress_bar.format_stat = _format_precisely

if __name__ == "__main__":
    if sys.argv[1:2] == ["--start-method"]:
        multiprocessing.set_start_method(sys.argv[2], force=True)
        del sys.argv[1:3]
    cli_main()
