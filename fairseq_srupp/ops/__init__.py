"""The plugin's operators: the SRU++ recurrence (``ops.recurrence``) and the fused CPU dropout
(``ops.dropout``), each with a pure-PyTorch reference."""


def load_cpu_extensions():
    """Compile (on first use) and load every C++ CPU extension, the recurrence's and the dropout's.

    Benchmarks call it before they start timing, so a first-use build is not counted as training.
    """
    from .dropout.cpu import load_dropout_extension
    from .recurrence.cpu import load_cpu_extension

    return load_cpu_extension(), load_dropout_extension()
