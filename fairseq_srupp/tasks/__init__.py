from .srupp_language_modeling import SRUppLanguageModelingConfig, SRUppLanguageModelingTask  # noqa: F401
