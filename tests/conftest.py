import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny tensors on a shared 2-core CPU: more intra-op threads only add contention and OpenMP
    spin-waits (seconds per test, up to 20x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
