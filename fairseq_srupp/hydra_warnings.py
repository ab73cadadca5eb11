"""Silence the Hydra deprecation notices fairseq 0.12 triggers on every start.

fairseq builds its config through Hydra APIs that Hydra 1.1+ deprecates (``hydra.experimental``,
``# @package _group_`` headers, schema matching by name, ``strict``), and each start prints about 20
lines of ``UserWarning`` about them. A user can do nothing about those, and they bury the one
``error: ...`` line of a mistake. Only these notices are filtered, by their wording; every other
warning is kept, and ``FAIRSEQ_SRUPP_DEBUG=1`` keeps these too.
"""
import os
import warnings

# The start of each notice's message (after its leading newline, if any), as Hydra 1.1-1.3 words it.
HYDRA_NOTICES = (
    r"hydra\.experimental\.\w+\(\) is no longer experimental",
    r"The version_base parameter is not specified",
    r"In '[^']*': Usage of deprecated keyword in package header",
    r"'[^']*' is validated against ConfigStore schema with the same name",
    r"The strict flag in the compose API is deprecated",
)


def silence_fairseq_hydra_notices() -> None:
    """Install the filters (idempotent: ``warnings`` drops duplicate filters)."""
    if os.environ.get("FAIRSEQ_SRUPP_DEBUG", "") not in ("", "0"):
        return
    for notice in HYDRA_NOTICES:
        warnings.filterwarnings("ignore", message=r"\s*" + notice, category=UserWarning)
