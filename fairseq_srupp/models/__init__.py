from .srupp_lm import SRUppDecoder, SRUppLanguageModel, SRUppLMConfig  # noqa: F401 (registers srupp_lm)
