from .srupp_language_modeling import SRUppLanguageModelingConfig, SRUppLanguageModelingTask  # noqa: F401

from fairseq_srupp import register as _register  # noqa: E402

_register()  # importing one fairseq-facing subpackage registers them all
