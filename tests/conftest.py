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
