from .srupp_adaptive_loss import SRUppAdaptiveLoss  # noqa: F401 (registers srupp_adaptive_loss)
