def first_value(value) -> float:
    """fairseq stores --lr as a list (one per epoch), handed over as a list or an OmegaConf ListConfig."""
    try:
        return float(value)
    except TypeError:
        return float(value[0])
