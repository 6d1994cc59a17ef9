"""Built-in mixers, one module per family. Importing this package registers them."""

from zoo.mixers import (  # noqa: F401
    attention,
    hashhop_attn,
    hsa,
    hyena,
    mamba,
    mamba2,
    retnet,
    rwkv7,
    s4d,
)
