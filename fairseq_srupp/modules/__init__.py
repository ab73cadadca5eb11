"""SRU++ as plain PyTorch modules: usable without fairseq (importing them does not import it)."""
from .dropout import Dropout
from .srupp import SRUpp, layer_has_attention
from .srupp_layer import SRUppLayer
from .transforms import SRUppAttention, SRUppProjectedLinear, attention_bias

__all__ = [
    "Dropout",
    "SRUpp",
    "SRUppAttention",
    "SRUppLayer",
    "SRUppProjectedLinear",
    "attention_bias",
    "layer_has_attention",
]
