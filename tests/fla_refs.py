"""flash-linear-attention's plain-torch naive references, loaded by file so that fla's package
import (Triton, transformers) is not needed. Used by the RWKV-7 and RetNet oracle tests."""

import importlib.util
import os

import pytest


def fla_naive(relpath: str):
    spec = importlib.util.find_spec("fla")
    if spec is None:
        pytest.skip("flash-linear-attention is not installed (pip install 'mixer-zoo[gpu]')")
    path = os.path.join(spec.submodule_search_locations[0], relpath)
    mod_spec = importlib.util.spec_from_file_location("fla_naive_" + relpath.replace("/", "_")[:-3], path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod
