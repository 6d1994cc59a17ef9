"""Attention mixers beyond the conformance suite: FlexAttention paths against the reference
(forward, on CPU), banded block masks, backend choice, ReRoPE and dynamic NTK with the cache,
evaluation-time RoPE overrides, runtime knobs, sliding windows under every scheme."""

import pytest
import torch

from zoo.errors import LengthError, ZooError
from zoo.kernels import flex
from zoo.mixers.attention import Attention, override_rope_scaling
from zoo.model import ModelConfig, ZooLM
from zoo.registry import build_mixer

D = 32


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def mixer(name: str, **overrides) -> Attention:
    torch.manual_seed(0)
    m = build_mixer(name, D, {"n_heads": 2, **overrides})
    with torch.no_grad():  # make learned tables matter
        for n, p in m.named_parameters():
            if n.startswith("pe."):
                p.normal_(0, 0.5)
    return m.eval()


def x_of(length: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, length, D, generator=torch.Generator().manual_seed(seed))


def chunked(m: Attention, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    cache, outs, i = m.new_cache(x.shape[0], x.device, x.dtype), [], 0
    for s in sizes:
        outs.append(m(x[:, i:i + s], cache))
        i += s
    return torch.cat(outs, 1)


def close(a, b, atol=2e-5):
    err = (a - b).abs().max().item()
    assert err <= atol * max(1.0, b.abs().max().item()), f"max difference {err:.3g}"


# -- FlexAttention on CPU (forward only) vs the reference ----------------------------------------------

BANDS = [(0, None), (0, 50), (0, 128), (40, None), (129, 200), (3, 7)]
SHAPES = [(24, 24), (200, 200), (300, 300), (1, 300), (77, 333), (128, 256), (256, 256)]


@pytest.mark.parametrize("q_len,kv_len", SHAPES)
def test_band_block_mask_matches_create_block_mask(q_len, kv_len):
    from torch.nn.attention.flex_attention import create_block_mask

    off = kv_len - q_len
    for lo, hi in BANDS:
        top = hi if hi is not None else 10**9

        def band(b, h, q, k, lo=lo, top=top):
            return (q + off - k >= lo) & (q + off - k < top)

        ours = flex.band_block_mask(q_len, kv_len, lo, hi, "cpu")
        theirs = create_block_mask(band, None, None, q_len, kv_len, device="cpu")
        assert torch.equal(ours.to_dense(), theirs.to_dense()), (lo, hi)
        assert torch.equal(ours.full_kv_num_blocks, theirs.full_kv_num_blocks), (lo, hi)
        assert torch.equal(ours.kv_num_blocks, theirs.kv_num_blocks), (lo, hi)


def test_band_block_masks_are_reused():
    a = flex.band_block_mask(300, 300, 0, None, "cpu")
    assert flex.band_block_mask(300, 300, 0, None, "cpu") is a


FLEX_CASES = [  # eager FlexAttention on CPU costs about a second per new shape: few, telling cases
    ("alibi", {}),
    ("t5-bias", {}),
    ("swa", {"window": 37, "position": "alibi"}),
    ("rerope", {"rerope_window": 45, "window": 100}),
    ("leaky-rerope", {"rerope_window": 100, "factor": 4.0}),
]


@pytest.mark.parametrize("name,cfg", FLEX_CASES)
def test_flex_matches_reference(name, cfg):
    m = mixer(name, **cfg)
    B, H, L, Dh = 2, 2, 140, 16  # past one 128-token block
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(B, H, L, Dh, generator=g) for _ in range(3))
    pos = torch.arange(1000, 1000 + L)  # absolute positions far from 0: offsets must not matter
    with torch.no_grad():
        want = m.attend(q, k, v, pos, pos, backend="torch")
        close(m.attend(q, k, v, pos, pos, backend="flex"), want)
        # chunked inference: the last queries over all keys (queries at the end of the keys)
        n = 1 if name == "alibi" else 7
        close(m.attend(q[:, :, -n:], k, v, pos[-n:], pos, backend="flex"), want[:, :, -n:])


def test_merge_partials_is_one_softmax():
    g = torch.Generator().manual_seed(0)
    s, v = torch.randn(2, 3, 5, 9, generator=g), torch.randn(2, 3, 9, 4, generator=g)
    a, b = s[..., :4], s[..., 4:]
    o = flex.merge_partials(a.softmax(-1) @ v[:, :, :4], a.logsumexp(-1), b.softmax(-1) @ v[:, :, 4:], b.logsumexp(-1))
    close(o, s.softmax(-1) @ v, atol=1e-6)
    # a side with no keys (lse = -inf) drops out
    empty = torch.full_like(a[..., 0], float("-inf"))
    close(flex.merge_partials(a.softmax(-1) @ v[:, :, :4], a.logsumexp(-1), torch.zeros_like(o), empty),
          a.softmax(-1) @ v[:, :, :4], atol=1e-6)


# -- backend choice ----------------------------------------------------------------------------------------

def test_backend_choice_says_why():
    cpu = torch.device("cpu")
    nope, alibi, swa = mixer("nope"), mixer("alibi"), mixer("swa")
    assert nope.backend_choice(cpu).chosen == "sdpa"
    assert nope.refuses("flex") is None and "SDPA's fused kernels are faster" in nope.passes_over("flex")
    c = alibi.backend_choice(cpu)
    assert c.chosen == "torch"
    assert "bias" in c.reasons["sdpa"] and "CUDA" in c.reasons["flex"]
    assert "ReRoPE" in mixer("rerope").refuses("sdpa")
    assert mixer("t5-bias").refuses("flash") is not None
    # a window: FlexAttention first where it runs, else SDPA's dense mask before the reference
    assert swa.passes_over("flex") is None and "dense" in swa.passes_over("sdpa")
    assert swa.backend_choice(cpu).chosen == "sdpa"
    with pytest.raises(ZooError, match="cannot run"):
        build_mixer("alibi", D, {"n_heads": 2, "backend": "sdpa"})(x_of(4))
    with pytest.raises(ZooError, match="cannot run on cpu"):
        build_mixer("alibi", D, {"n_heads": 2, "backend": "flex"})(x_of(4))


@pytest.mark.parametrize("name,cfg", [("swa", {"window": 5}), ("rope-dynamic-ntk", {"original_length": 6,
                                                                                    "dynamic_step": 1})])
def test_sdpa_matches_reference_chunked(name, cfg):
    ref, fast = mixer(name, backend="torch", **cfg), mixer(name, backend="sdpa", **cfg)
    x = x_of(40)
    with torch.no_grad():
        want = ref(x)
        close(fast(x), want)
        close(chunked(fast, x, [13, 1, 26]), want)
    assert fast.last_backend == "sdpa" and ref.last_backend == "torch"


# -- RoPE family ----------------------------------------------------------------------------------------------

def test_rerope_is_rope_inside_the_window():
    x = x_of(30)
    with torch.no_grad():
        rope = mixer("rope")(x)
        assert torch.allclose(mixer("rerope", rerope_window=64)(x), rope, atol=1e-5)  # window covers all
        near = mixer("rerope", rerope_window=10)(x)
        assert torch.allclose(near[:, :10], rope[:, :10], atol=1e-5)  # rows that see no distance >= w
        assert not torch.allclose(near[:, 10:], rope[:, 10:], atol=1e-3)
        assert torch.allclose(mixer("leaky-rerope", rerope_window=10, factor=1.0)(x), rope, atol=1e-5)


def test_rerope_far_scores_read_as_the_window():
    # past the window every key is seen at distance w: with equal keys there, the far rows of
    # ReRoPE equal an attention whose far keys were all rotated to position (query - w)
    m = mixer("rerope", rerope_window=4)
    q, k, v = (torch.randn(1, 2, 12, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    pos = torch.arange(12)
    with torch.no_grad():
        out = m.attend(q, k, v, pos, pos, backend="torch")
        for i in (6, 11):
            inv = m.pe.inv_freq(q.device)
            dist = torch.clamp(i - pos[: i + 1], max=4)
            qr, _ = m.pe.rotate(q[:, :, i:i + 1], k[:, :, :1], pos[i:i + 1], pos[:1], inv)
            kr = torch.cat([m.pe.rotate(q[:, :, :1], k[:, :, j:j + 1], pos[:1], (i - dist[j]).reshape(1), inv)[1]
                            for j in range(i + 1)], dim=2)
            want = ((qr @ kr.transpose(-1, -2)) / 4).softmax(-1) @ v[:, :, : i + 1]
            close(out[:, :, i:i + 1], want, atol=1e-5)


def test_dynamic_ntk_groups_use_the_length_of_each_query():
    m = mixer("rope-dynamic-ntk", original_length=8, dynamic_step=4, factor=2.0)
    groups = m.pe.groups(0, 20, torch.device("cpu"))
    assert [(g.start, g.stop) for g, _ in groups] == [(0, 8), (8, 12), (12, 16), (16, 20)]
    from zoo.positional import dynamic_ntk_base, rope_inv_freq

    for (_, inv), length in zip(groups, [8, 12, 16, 20]):
        assert torch.allclose(inv, rope_inv_freq(m.head_dim, dynamic_ntk_base(10000.0, m.head_dim, 2.0, length, 8)))


@pytest.mark.parametrize("first,n,orig,step", [(0, 20, 8, 4), (5, 30, 10, 4), (37, 9, 8, 4), (0, 6, 8, 4),
                                                 (3, 1, 8, 3), (7, 50, 16, 1)])
def test_dynamic_ntk_groups_from_integers_match_each_query_length(first, n, orig, step):
    m = mixer("rope-dynamic-ntk", original_length=orig, dynamic_step=step, factor=2.0)
    want = [orig if p + 1 <= orig else -(-(p + 1) // step) * step for p in range(first, first + n)]
    got = []
    for rows, inv in m.pe.groups(first, n, torch.device("cpu")):
        length = want[rows.start]
        assert all(w == length for w in want[rows]), (rows, want)
        assert torch.equal(inv, m.pe.inv_freq(torch.device("cpu"), length))
        got += [length] * (rows.stop - rows.start)
    assert got == want  # every row once, in order, runs maximal (neighbouring groups differ)
    lengths = [want[r.start] for r, _ in m.pe.groups(first, n, torch.device("cpu"))]
    assert all(a != b for a, b in zip(lengths, lengths[1:]))


def test_dynamic_ntk_compiles_to_one_graph_at_its_original_length():
    """Training rows within original_length: one frequency group, worked out from integers, not
    from a tensor of positions (which broke the compiled graph once per layer and synced with the
    device). Longer rows split the queries into groups, each attending through SDPA's lower-right
    causal mask, which Dynamo does not trace (a break per group, at evaluation only)."""
    from zoo.model import ModelConfig, ZooLM

    model = ZooLM(ModelConfig(vocab_size=32, d_model=32, n_layers=2, layers=["rope-dynamic-ntk"],
                              mixer_config={"rope-dynamic-ntk": {"n_heads": 2, "original_length": 8,
                                                                 "dynamic_step": 4, "factor": 2.0}}))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(torch.randint(0, 32, (1, 8)))
    assert explained.graph_break_count == 0, explained.break_reasons


@pytest.mark.parametrize("method,factor", [("dynamic-ntk", 4.0), ("yarn", 4.0), ("rerope", 1.0),
                                           ("leaky-rerope", 8.0), ("pi", 2.0), ("ntk", 3.0)])
def test_override_works_with_the_cache(method, factor):
    m = mixer("rope")
    x = x_of(36)
    with torch.no_grad():
        before = m(x)
        override_rope_scaling(m, method, factor, original_length=8)
        full = m(x)
        assert not torch.allclose(full, before, atol=1e-4)
        close(chunked(m, x, [1] * 36), full, atol=2e-5)
        close(chunked(m, x, [5, 17, 1, 13]), full, atol=2e-5)


def test_yarn_scales_logits_by_the_attention_factor_squared():
    m = mixer("rope-yarn", factor=16.0, original_length=8)
    q, k = torch.randn(1, 2, 1, 16), torch.randn(1, 2, 1, 16)
    p = torch.tensor([3])
    qa, ka = m.pe.rotate(q, k, p, p, m.pe.inv_freq("cpu"))
    from zoo.positional import yarn_attention_factor

    ratio = (qa * ka).sum() / (q * k).sum()  # same position: the rotation cancels in q.k
    assert ratio.item() == pytest.approx(yarn_attention_factor(16.0) ** 2, rel=1e-5)


def test_override_on_a_model_and_back():
    model = ZooLM(ModelConfig(d_model=D, n_layers=3, layers=["rope", "nope", "swa"],
                              mixer_config={"rope": {"n_heads": 2}, "nope": {"n_heads": 2},
                                            "swa": {"n_heads": 2, "window": 6}})).eval()
    tokens = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model(tokens)
        override_rope_scaling(model, "yarn", 4.0, original_length=16)
        rope, swa = model.mixers[0], model.mixers[2]
        assert rope.config.scaling == swa.config.scaling == "yarn" and rope.config.original_length == 16
        assert model.mixers[1].config.model_dump().get("scaling") is None
        assert not torch.allclose(model(tokens), base, atol=1e-4)
        override_rope_scaling(model, "none", 1.0)
        assert torch.allclose(model(tokens), base, atol=1e-6)


def test_override_refuses_models_without_rope():
    model = ZooLM(ModelConfig(d_model=D, n_layers=2, layers=["alibi", "nope"]))
    with pytest.raises(ZooError, match="no RoPE layers"):
        override_rope_scaling(model, "yarn", 4.0)
    with pytest.raises(ZooError, match="unknown RoPE scaling"):
        override_rope_scaling(model, "longrope", 4.0)


def test_xpos_and_biases_are_translation_invariant():
    # relative schemes see only distances: shifting every position leaves the output unchanged
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 20, 16, generator=g) for _ in range(3))
    for name in ("xpos", "rope", "alibi", "t5-bias", "rerope", "leaky-rerope"):
        m = mixer(name, rerope_window=5) if "rerope" in name else mixer(name)
        with torch.no_grad():
            a = m.attend(q, k, v, torch.arange(20), torch.arange(20), backend="torch")
            b = m.attend(q, k, v, torch.arange(5000, 5020), torch.arange(5000, 5020), backend="torch")
        close(b, a, atol=1e-4)


def test_xpos_decays_towards_rope_as_scale_base_grows():
    x = x_of(20)
    with torch.no_grad():
        close(mixer("xpos", scale_base=1e9)(x), mixer("rope")(x), atol=1e-5)
        assert not torch.allclose(mixer("xpos", scale_base=4.0)(x), mixer("rope")(x), atol=1e-3)


# -- knobs, lengths, windows ------------------------------------------------------------------------------

def test_runtime_knobs():
    m = mixer("swa", window=4)
    m.set_knob("window", 9)
    assert m.window == 9 and m.config.window == 9
    r = mixer("rope")
    x = x_of(10)
    with torch.no_grad():
        before = r(x)
        r.set_knob("base", 500000.0)
        assert r.pe.base == 500000.0 and not torch.allclose(r(x), before, atol=1e-4)
    with pytest.raises(ZooError, match="no runtime setting"):
        mixer("alibi").set_knob("base", 10.0)
    with pytest.raises(ZooError, match="config: key .window. = 0 is invalid"):
        m.set_knob("window", 0)
    with pytest.raises(ZooError, match="cannot change after construction"):
        m.reconfigure(n_heads=4)


def test_learned_refuses_past_its_table():
    m = mixer("learned", max_length=16)
    assert m.max_length == 16
    with torch.no_grad():
        cache = m.new_cache(2, "cpu", torch.float32)
        m(x_of(10), cache)
        with pytest.raises(LengthError):
            m(x_of(7), cache)
    assert ZooLM(ModelConfig(d_model=D, n_layers=1, layers=["learned"],
                             mixer_config={"learned": {"max_length": 16, "n_heads": 2}})).max_length == 16


@pytest.mark.parametrize("position", ["nope", "sinusoidal", "learned", "t5-bias", "alibi", "rope", "xpos"])
def test_sliding_window_under_every_scheme(position):
    W = 5
    m, full = mixer("swa", window=W, position=position), mixer("swa", window=64, position=position)
    x = x_of(30)
    with torch.no_grad():
        y = m(x)
        close(chunked(m, x, [1] * 30), y)
        cache = m.new_cache(2, "cpu", torch.float32)
        m(x[:, :20], cache)
        assert cache.k.shape[2] == W  # the cache keeps only the window
        # a token beyond the window cannot influence the output
        x2 = x.clone()
        x2[:, 10] += 5.0
        assert torch.allclose(m(x2)[:, 10 + W:], y[:, 10 + W:], atol=1e-6)
        assert not torch.allclose(full(x2)[:, 10 + W:], full(x)[:, 10 + W:], atol=1e-4)
