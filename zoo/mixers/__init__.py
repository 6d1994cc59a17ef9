"""Built-in mixers, one module per family. Importing this package registers them."""

from zoo.mixers import attention  # noqa: F401
from zoo.mixers import mamba  # noqa: F401
from zoo.mixers import mamba2  # noqa: F401
from zoo.mixers import s4d  # noqa: F401
from zoo.mixers import hyena  # noqa: F401
from zoo.mixers import hsa  # noqa: F401
from zoo.mixers import hashhop_attn  # noqa: F401
from zoo.mixers import rwkv7  # noqa: F401
from zoo.mixers import retnet  # noqa: F401
