import os

import pytest
import torch

# no test downloads: Hugging Face libraries read this when first imported, by whichever test that is
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def one_thread():
    """Tiny tensors on a shared 2-core CPU: more intra-op threads only add contention and OpenMP
    spin-waits (seconds per test, up to 20x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def no_tf32():
    """fp32 comparisons on the GPU: keep cuDNN convs and matmuls out of TF32."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture
def nan_mixer():
    """A registered mixer named `test-nan` that is NoPE attention until its third forward, then
    NaN: for failure diagnosis. Unregistered afterwards."""
    from zoo.mixers.attention import NoPE
    from zoo.registry import MIXERS, register_mixer

    class NaNFrom(NoPE):
        def forward(self, x, cache=None):
            self.calls = getattr(self, "calls", 0) + 1
            y = super().forward(x, cache)
            return y * float("nan") if self.calls > 2 else y

    register_mixer(name="test-nan", family="test", description="breaks on purpose", citation="-",
                   capabilities=NoPE.spec.capabilities, backends=NoPE.spec.backends, tiny={"n_heads": 2})(NaNFrom)
    yield "test-nan"
    MIXERS.items.pop("test-nan", None)
