"""Reading fairseq's optimizer values as given on the command line (strings, lists), with one error line."""
import ast
from typing import Tuple

from fairseq_srupp.errors import SRUppUserError


def first_value(value) -> float:
    """fairseq stores --lr as a list (one per epoch), handed over as a list or an OmegaConf ListConfig."""
    try:
        return float(value)
    except TypeError:
        return float(value[0])


def parse_betas(value, flag: str = "--radam-betas") -> Tuple[float, float]:
    """``--radam-betas`` / ``--adam-betas``: fairseq passes tuples on the command line as the string "(0.9, 0.999)"."""
    try:
        betas = tuple(float(b) for b in (ast.literal_eval(value) if isinstance(value, str) else value))
    except (ValueError, TypeError, SyntaxError):
        betas = ()
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise SRUppUserError("{} {!r} must be two numbers in [0, 1), e.g. '(0.9, 0.999)'".format(flag, value))
    return betas


def check_non_negative(flag: str, value) -> None:
    """One error line for an optimizer setting below 0 (or NaN): a learning rate, epsilon or weight decay."""
    if not value >= 0:
        raise SRUppUserError("{} must be >= 0, got {}".format(flag, value))
