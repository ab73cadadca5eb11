from .srupp import SRUpp, layer_has_attention
from .srupp_layer import SRUppLayer
from .transforms import SRUppAttention, SRUppProjectedLinear, attention_bias

__all__ = [
    "SRUpp",
    "SRUppAttention",
    "SRUppLayer",
    "SRUppProjectedLinear",
    "attention_bias",
    "layer_has_attention",
]
