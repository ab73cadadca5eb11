"""Data: byte-level text (``char_level``, the ``srupp_bytes`` BPE, registered on import) and the
machinery of ``data_scripts/``, one module per job:

* ``prep``: the scripts' errors and exit (one ``error:`` line; Ctrl-C and SIGTERM clean up);
* ``files``: fingerprints, atomic writes, checked inputs (files, directories, UTF-8 text);
* ``steps``: idempotent steps recorded in stamps;
* ``fetch``: downloads, checksums, archives;
* ``preprocess``: the one way ``fairseq-preprocess`` is run (in process);
* ``binarize``: the byte-level and word-level steps the scripts share;
* ``vocab``: fairseq's special symbols and vocabulary files.
"""
from . import byte_bpe  # noqa: F401  (registers --bpe srupp_bytes)

from fairseq_srupp import register as _register  # noqa: E402

_register()  # importing one fairseq-facing subpackage registers them all
