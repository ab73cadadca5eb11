"""Silence the notices fairseq 0.12 makes Hydra and PyTorch print on every start or step.

* Hydra: fairseq builds its config through Hydra APIs that Hydra 1.1+ deprecates
  (``hydra.experimental``, ``# @package _group_`` headers, schema matching by name, ``strict``), and
  each start prints about 20 lines of ``UserWarning`` about them.
* PyTorch: fairseq's trainer enters ``torch.cuda.amp.autocast`` (and builds ``torch.cuda.amp.GradScaler``
  for ``--amp``), which PyTorch 2.4+ deprecates with a ``FutureWarning`` at every training and
  validation start; and fairseq's iterators always ask the DataLoader for pinned memory, which PyTorch
  refuses with a ``UserWarning`` on a machine without an accelerator, once per epoch and validation.

A user can do nothing about those (they are fairseq's calls, not the user's), and they bury the one
``error: ...`` line of a mistake. Only these notices are filtered, by their wording and category;
every other warning is kept, and ``FAIRSEQ_SRUPP_DEBUG=1`` keeps these too.
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
# (category, start of message, calling module) as PyTorch 2.4-2.13 words them. The deprecations are
# silenced only where fairseq's code makes the call, so a user's own call still warns.
TORCH_NOTICES = (
    (FutureWarning, r"`torch\.cuda\.amp\.autocast\(args\.\.\.\)` is deprecated", r"fairseq\."),
    (FutureWarning, r"`torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated", r"fairseq\."),
    (UserWarning, r"'pin_memory' argument is set as true but no accelerator is found", ""),
)


def silence_fairseq_notices() -> None:
    """Install the filters (idempotent: ``warnings`` drops duplicate filters)."""
    if os.environ.get("FAIRSEQ_SRUPP_DEBUG", "") not in ("", "0"):
        return
    for notice in HYDRA_NOTICES:
        warnings.filterwarnings("ignore", message=r"\s*" + notice, category=UserWarning)
    for category, notice, module in TORCH_NOTICES:
        warnings.filterwarnings("ignore", message=notice, category=category, module=module)
