from .srupp_lm import SRUppDecoder, SRUppLanguageModel, SRUppLMConfig  # noqa: F401 (registers srupp_lm)

from fairseq_srupp import register as _register  # noqa: E402

_register()  # importing one fairseq-facing subpackage registers them all
