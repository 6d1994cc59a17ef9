"""The kernel backends of the linear mixers at a million tokens, against our torch references
(CUDA with mamba_ssm and flash-linear-attention only).

At the bench's width (d_model 1024, default configs, batch 1) a million tokens puts several of
the kernels' tensors past 2^31 elements, where a kernel that offsets pointers in int32 reads
wrong memory without an error (state-spaces/mamba#1015). The reference runs the same weights
in fp32 through the torch backend, 64K tokens at a time with the cache carrying the state
(CPU tests show that chunked and whole passes agree). The kernel runs in bf16, as the bench
does; the bound is twice what bf16 costs our torch path on the first 64K (as in
test_rwkv7_gpu.py), at every 64K of the sequence: wrong offsets give errors near 1.
rwkv7 runs at 512K: its 1M forward alone takes most of the H100's 80 GB (fla's layer: 76 GB),
leaving no room for the reference beside it.
"""

import pytest
import torch

from zoo.registry import build_mixer, get_spec

CUDA = torch.device("cuda")
D, CHUNK = 1024, 65536
LENGTHS = {"mamba": 2**20, "mamba2": 2**20, "retnet": 2**20, "rwkv7": 2**19}
KERNEL = {"mamba": "mamba_ssm", "mamba2": "mamba_ssm", "retnet": "fla", "rwkv7": "fla"}


def unavailable(name):
    if not torch.cuda.is_available():
        return "needs CUDA"
    return get_spec(name).choose_backend(CUDA).reasons.get(KERNEL[name])


@pytest.fixture(autouse=True)
def _release(no_tf32):
    yield
    torch.cuda.empty_cache()  # each test fills most of the GPU


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("name", list(LENGTHS))
def test_kernel_at_a_million_tokens_matches_the_reference(name, record_property):
    why = unavailable(name)
    if why is not None:
        pytest.skip(str(why))
    torch.manual_seed(0)
    ref = build_mixer(name, D, {"backend": "torch"}).to(CUDA)
    with torch.no_grad():  # zero-initialised projections would hide errors
        for p in ref.parameters():
            p.add_(0.02 * torch.randn_like(p))
    fast = build_mixer(name, D, {"backend": KERNEL[name]}).to(CUDA)
    fast.load_state_dict(ref.state_dict())
    fast = fast.bfloat16()
    ref16 = build_mixer(name, D, {"backend": "torch"}).to(CUDA)
    ref16.load_state_dict(ref.state_dict())
    ref16 = ref16.bfloat16()
    L = LENGTHS[name]
    x = torch.randn(1, L, D, device=CUDA)
    with torch.no_grad():
        got = fast(x.bfloat16())
        assert fast.last_backend == KERNEL[name]
        cache, errs = ref.new_cache(1, CUDA, torch.float32), []
        for i in range(0, L, CHUNK):
            want = ref(x[:, i:i + CHUNK], cache)
            if i == 0:
                floor = rel(ref16(x[:, :CHUNK].bfloat16()), want)
            errs.append(rel(got[:, i:i + CHUNK], want))
    record_property("bf16 out, relative L2 per 64K: first / last / worst / torch bf16 on the first",
                    f"{errs[0]:.3e} / {errs[-1]:.3e} / {max(errs):.3e} / {floor:.3e}")
    assert max(errs) <= max(1e-2, 2 * floor), (floor, errs)
