"""fairseq-srupp: SRU++ (Lei 2021) as a fairseq plugin (``--user-dir fairseq_srupp``).

Importing the package registers its fairseq components; the op and module packages import
nothing from fairseq's registries and can be used alone.
"""
from .numpy_compat import install as _install_numpy_compat

_install_numpy_compat()  # before fairseq builds any dataset

from .errors import install_excepthook as _install_excepthook

_install_excepthook()  # SRUppUserError -> one line on the terminal (FAIRSEQ_SRUPP_DEBUG=1: traceback)

from . import criterions  # noqa: F401  (registers srupp_adaptive_loss)
from . import data  # noqa: F401  (registers the srupp_bytes BPE)
from . import models  # noqa: F401  (registers srupp_lm and its architectures)
from . import optim  # noqa: F401  (registers radam and srupp_cosine)
from . import tasks  # noqa: F401  (registers srupp_language_modeling)
from .fairseq_fixes import install as _install_fairseq_fixes

_install_fairseq_fixes()  # --log-file lines once; srupp_lm generation with empty forced prefixes

__version__ = "0.1.0"
