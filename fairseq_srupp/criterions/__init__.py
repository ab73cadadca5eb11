from .srupp_adaptive_loss import SRUppAdaptiveLoss  # noqa: F401 (registers srupp_adaptive_loss)

from fairseq_srupp import register as _register  # noqa: E402

_register()  # importing one fairseq-facing subpackage registers them all
