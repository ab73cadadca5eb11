from .radam import FairseqRAdam  # noqa: F401  (registers --optimizer radam)
from .warmup_cosine import SRUppCosineSchedule, paper_learning_rate  # noqa: F401  (--lr-scheduler srupp_cosine)

from fairseq_srupp import register as _register  # noqa: E402

_register()  # importing one fairseq-facing subpackage registers them all
