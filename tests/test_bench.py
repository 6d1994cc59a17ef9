"""`zoo bench` on CPU at tiny sizes: the stored rows, the failure rows, and the peers' arithmetic."""

from __future__ import annotations

import json
import time

import pytest
import torch

from zoo import bench
from zoo.bench import builtin_peers, run, targets
from zoo.cli import main
from zoo.errors import ZooError
from zoo.kernels import flex
from zoo.mixers.attention import NoPE, Sinusoidal, attention_reference, causal_mask
from zoo.positional import alibi_slopes, t5_bucket
from zoo.registry import build_mixer
from zoo.store import Store

TINY = ["--d-model", "32", "--tokens-per-batch", "256", "--reps", "2", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_sizes():
    assert bench.parse_size("1k") == 1024
    assert bench.parse_size("128K") == 131072
    assert bench.parse_size("1m") == 2**20
    assert bench.parse_size("4096") == 4096
    assert bench.parse_sizes("2k,1k,1k") == [1024, 2048]
    assert bench.parse_sizes("1k..8k") == [1024, 2048, 4096, 8192]
    for bad in ("", "1x", "-3", "0.5"):
        with pytest.raises(ZooError):
            bench.parse_sizes(bad)
    assert bench.BenchConfig(seq_lens=[64, 2**20]).lengths() == [64, 2**20]  # 1m asked: long lengths on
    assert bench.BenchConfig(seq_lens=[64], long=True).lengths() == [64, 2**20]
    assert bench.BenchConfig(seq_lens=[64]).lengths() == [64]


def test_bench_stores_rows(tmp_path):
    out = tmp_path / "bench.json"
    rc = main(["bench", *TINY, "--seq-lens", "64,128", "--mixers", "nope,sinusoidal", "--model", "--n-layers", "1",
               "--root", str(tmp_path), "--json", str(out)])
    assert rc == 0
    store = Store(tmp_path)
    (run,) = store.runs(kind="bench")
    assert run["status"] == "done" and run["id"].startswith("bench-")
    assert run["provenance"]["versions"]["torch"] == torch.__version__
    rows = store.results(run_id=run["id"], kind="bench")
    assert rows == [dict(r, run_id=run["id"], kind="bench") for r in json.loads(out.read_text())["rows"]]

    by = {(r["name"], r["mode"], r["seq_len"]): r for r in rows}
    for name in ("nope", "sinusoidal", "model:nope", "model:sinusoidal", "sdpa-flash", "sdpa-math"):
        for mode in ("fwd", "fwdbwd", "decode"):
            for L in (64, 128):
                r = by[(name, mode, L)]
                assert r["status"] == "ok", r
                assert r["batch"] == 256 // L and r["reps"] >= 1 and r["time_ms"] > 0
                assert r["peak_mem_bytes"] is None  # no allocator counter on CPU: n/a, not a made-up number
                work = r["batch"] * (1 if mode == "decode" else L)
                assert r["tokens_per_s"] == pytest.approx(work / (r["time_ms"] / 1e3))
                assert r["tflops"] == pytest.approx(
                    r["flops_per_token"] * r["flop_factor"] * work / (r["time_ms"] / 1e3) / 1e12)
    # the mixer's own FLOP count; decode counts the marginal token (context L + 1)
    nope = build_mixer("nope", 32)
    assert by[("nope", "fwd", 128)]["flops_per_token"] == nope.flops_per_token(128)
    assert by[("nope", "fwdbwd", 128)]["flop_factor"] == 3
    inner = nope.n_heads * nope.head_dim
    assert by[("nope", "decode", 128)]["flops_per_token"] == pytest.approx(2 * 4 * 32 * inner + 4 * inner * 129)
    assert by[("nope", "decode", 128)]["cache_bytes"] == by[("nope", "decode", 128)]["state_bytes"]
    assert by[("nope", "fwd", 64)]["backend"] == "sdpa"
    # peers name the mixer they stand beside; those that cannot run here say why
    assert by[("sdpa-flash", "fwd", 64)]["peer_of"] == "nope"
    assert by[("sdpa-cudnn", "fwd", 64)]["status"] == "skipped: the cudnn SDPA kernel runs on CUDA only"
    assert by[("flex", "fwdbwd", 128)]["status"].startswith("skipped: ")
    assert ("sdpa-flash", "fwd", 64) not in {(r["name"], r["mode"], r["seq_len"]) for r in rows
                                             if r["peer_of"] == "sinusoidal"}
    assert len(rows) == len(by)  # one row per (target, mode, length)

    ceilings = {c["name"]: c for c in store.results(run_id=run["id"], kind="ceiling")}
    assert ceilings["matmul"]["unit"] == "TFLOP/s" and ceilings["matmul"]["value"] > 0
    assert ceilings["copy"]["unit"] == "GB/s" and ceilings["copy"]["value"] > 0

    # the same bench again replaces its rows instead of doubling them
    assert main(["bench", *TINY, "--seq-lens", "64,128", "--mixers", "nope,sinusoidal", "--model", "--n-layers",
                 "1", "--root", str(tmp_path)]) == 0
    assert len(store.results(run_id=run["id"], kind="bench")) == len(rows)


def test_bench_records_failures_and_goes_on(tmp_path, monkeypatch, capsys):
    def oom_at_128(self, x, cache=None):
        if x.shape[1] >= 128:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")
        return orig(self, x, cache)

    def boom(self, x, cache=None):
        raise RuntimeError("boom")

    orig = NoPE.forward
    monkeypatch.setattr(NoPE, "forward", oom_at_128)
    monkeypatch.setattr(Sinusoidal, "forward", boom)
    monkeypatch.setattr(Sinusoidal, "max_length", property(lambda self: 64))
    rc = main(["bench", *TINY, "--seq-lens", "64,128,256", "--mixers", "nope,sinusoidal", "--peers", "none",
               "--root", str(tmp_path)])
    assert rc == 0
    rows = Store(tmp_path).results(kind="bench")
    status = {(r["name"], r["mode"], r["seq_len"]): r["status"] for r in rows}
    assert len(rows) == 2 * 3 * 3
    for mode in ("fwd", "fwdbwd", "decode"):
        assert status[("nope", mode, 64)] == "ok"
        assert status[("nope", mode, 128)] == "oom"
        assert status[("nope", mode, 256)] == "skipped: out of memory already at L=128"
        assert status[("sinusoidal", mode, 128)] == "n/a: max_length"
    assert status[("sinusoidal", "fwd", 64)] == "error: RuntimeError: boom"
    assert status[("sinusoidal", "fwdbwd", 64)] == "error: RuntimeError: boom"
    assert status[("sinusoidal", "decode", 64)] == "n/a: max_length"  # a step past 64 tokens cannot run
    failed = [r for r in rows if r["status"] != "ok"]
    assert all(r["time_ms"] is None and r["tflops"] is None for r in failed)
    table = capsys.readouterr().out
    assert "OOM" in table and "error" in table


def test_shape_a_kernel_would_crash_on_is_not_attempted(tmp_path, monkeypatch):
    """A target that declares a shape unsupported is never called at it: an illegal memory access
    would end the whole bench, unlike an exception."""
    def crash_past_256(self, x, cache=None):
        assert x.shape[0] * x.shape[1] <= 256, "called at a shape declared unsupported"
        return orig(self, x, cache)

    orig = NoPE.forward
    monkeypatch.setattr(NoPE, "forward", crash_past_256)
    monkeypatch.setattr(targets.MixerTarget, "unsupported",
                        lambda self, B, L: "int32 offsets: too many elements" if B * L > 256 else None)
    rc = main(["bench", *TINY, "--seq-lens", "64,512", "--tokens-per-batch", "256", "--mixers", "nope",
               "--peers", "none", "--fill-chunk", "64", "--root", str(tmp_path)])
    assert rc == 0
    status = {(r["mode"], r["seq_len"]): r["status"] for r in Store(tmp_path).results(kind="bench")}
    assert status == {**{(m, 64): "ok" for m in ("fwd", "fwdbwd", "decode")},
                      **{(m, 512): "n/a: int32 offsets: too many elements" for m in ("fwd", "fwdbwd", "decode")}}


def test_mamba2_peer_declares_where_its_int32_offsets_overflow():
    layer = torch.nn.Module()
    layer.in_proj = torch.nn.Linear(8, 4384)  # mamba_ssm.Mamba2 at d_model 1024
    peer = builtin_peers.MambaSsmPeer(layer, 2)
    assert peer.unsupported(4, 32768) is None and peer.unsupported(1, 131072) is None
    assert "int32" in peer.unsupported(1, 2**20)
    assert builtin_peers.MambaSsmPeer(layer, 1).unsupported(1, 2**20) is None  # Mamba's CUDA scan offsets in 64 bits


def test_bench_rejects_bad_flags(tmp_path):
    assert main(["bench", "--mixers", "nopee", "--root", str(tmp_path)]) == 2
    assert main(["bench", "--mode", "train", "--root", str(tmp_path)]) == 2
    assert main(["bench", "--peers", "sdpa-fast", "--root", str(tmp_path)]) == 2
    assert main(["bench", "--seq-lens", "8q", "--root", str(tmp_path)]) == 2


def test_skip_prediction_and_long_lengths():
    cfg = bench.BenchConfig(mixers=["nope"], seq_lens=[64, 2**20], tokens_per_batch=256, d_model=32, peers=[],
                            max_call_s=1.0)
    b = bench.Bench(cfg, progress=False)
    (t,) = b.targets
    assert t.quadratic
    assert run.predicted_seconds(t, (1024, 4, 0.1), 2048, 2) == pytest.approx(0.2)  # same tokens, L twice
    assert b.point(t, "fwd", 2**20)["status"].startswith("skipped: O(L^2) mixer")
    b.trackers[(t.name, "fwd")] = run.Tracker(last=(64, 4, 0.9))
    assert b.point(t, "fwd", 128)["status"].startswith("skipped: predicted 2 s per call")
    linear = bench.Bench(cfg.model_copy(update={"mixers": ["s4d"]}), progress=False).targets[0]
    assert not linear.quadratic
    assert b.point(linear, "fwdbwd", 2**20)["status"] == "skipped: lengths >= 1M run fwd and decode only"
    assert run.predicted_seconds(linear, (1024, 4, 0.1), 2048, 2) == pytest.approx(0.1)


def _peer_pair(variant: str | None, kernel: str = "math", **flex):
    torch.manual_seed(0)
    mixer = NoPE(32, NoPE.Config(n_heads=4))
    if variant is None:
        peer = builtin_peers.SdpaPeer.like(mixer, kernel=kernel)
    else:
        peer = builtin_peers.FlexPeer.like(mixer, variant=variant, compiled=False, **flex)
    missing = peer.load_state_dict(mixer.state_dict(), strict=False)
    assert not missing.unexpected_keys and set(missing.missing_keys) <= {"t5_bias"}
    return mixer, peer


def _heads(peer, x):
    return [peer._heads(w(x)) for w in (peer.wq, peer.wk, peer.wv)]


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("variant", [None, "flash", "causal", "alibi", "t5", "swa"])
def test_attention_peers_compute_the_same_layer(variant):
    """Each attention peer computes the layer it is timed against: same weights, same outputs,
    in one forward and in decode steps over its preallocated cache. 600 tokens span five
    128-token blocks, so the flex block masks hold full, partial and empty block pairs."""
    L, W, n_steps = 600, 300, 6
    if variant in (None, "flash"):
        mixer, peer = _peer_pair(None, kernel=variant or "math")
    else:
        mixer, peer = _peer_pair(variant, window=W if variant == "swa" else None)
    x = torch.randn(2, L, 32)
    pos = torch.arange(L)
    with torch.no_grad():
        q, k, v = _heads(peer, x)
        bias, window = None, None
        if variant == "alibi":
            bias = -alibi_slopes(4)[:, None, None] * (pos[:, None] - pos[None, :]).float()
        elif variant == "t5":
            bias = peer.t5_bias[:, t5_bucket(pos[:, None] - pos[None, :])]
        elif variant == "swa":
            window = W
        o = attention_reference(q, k, v, pos, pos, bias=bias, window=window)
        want = peer.wo(o.transpose(1, 2).reshape(2, L, -1))
        if variant in (None, "flash", "causal"):
            torch.testing.assert_close(mixer(x), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(peer(x), want, atol=1e-5, rtol=1e-5)
        state = peer.prefill(x[:, :L - n_steps], chunk=256, extra=n_steps)
        assert peer.state_nbytes(state) == 2 * (2 * 4 * (L - n_steps) * 8) * 4
        steps = torch.cat([peer.step(state, x[:, i:i + 1]) for i in range(L - n_steps, L)], dim=1)
        torch.testing.assert_close(steps, want[:, L - n_steps:], atol=1e-5, rtol=1e-5)


def test_band_block_mask_is_exact():
    """Block pairs marked full skip the mask_mod, so they must hold only kept pairs."""
    from torch.nn.attention.flex_attention import create_mask

    for L, window in ((600, None), (600, 300), (1000, 129), (256, 1)):
        bm = flex.band_block_mask(L, L, 0, window, "cpu")
        dense = create_mask(bm.mask_mod, None, None, L, L, "cpu")[0, 0]
        want = causal_mask(torch.arange(L), torch.arange(L), window)
        assert torch.equal(dense, want)
        blocks = bm.to_dense()[0, 0].bool()  # block pairs the kernel visits
        n = -(-L // 128)
        for i in range(n):
            for j in range(n):
                tile = want[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
                assert bool(blocks[i, j]) == bool(tile.any()), (L, window, i, j)
        full = bm.full_kv_num_blocks[0, 0], bm.full_kv_indices[0, 0]
        for i in range(n):
            for j in full[1][i, :full[0][i]].tolist():
                assert bool(want[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128].all()), (L, window, i, j)


def test_budget_shares_time_between_mixers(tmp_path):
    """With --budget-s, each mixer group gets its share; what is cut is recorded, never dropped."""
    cfg = bench.BenchConfig(mixers=["nope", "sinusoidal"], seq_lens=[64, 128], tokens_per_batch=256, d_model=32,
                            budget_s=1e-3, reps=1)
    result = bench.run_bench(cfg, store=Store(tmp_path), progress=False)
    assert len(result.rows) == 2 * 2 * 3 + 6 * 2 * 3  # nope, its six peers and sinusoidal: every point a row
    # the ceilings alone outlast a 1 ms budget: every point that could run is cut, with the reason
    assert all(r["status"].startswith("skipped: ") for r in result.rows)
    cut = [r for r in result.rows if r["status"].startswith("skipped: this mixer's share of the 0 s bench budget")]
    assert {r["name"] for r in cut} == {"nope", "sdpa-flash", "sdpa-math", "sinusoidal"} and len(cut) == 4 * 2 * 3
    assert Store(tmp_path).get_run(result.run_id)["status"] == "done"


def test_fla_peers_hold_our_mixers_weights():
    """The fla layers are built at our mixers' shapes (their kernels run on the GPU machine)."""
    pytest.importorskip("fla.layers")
    for name, which in (("retnet", "retention"), ("rwkv7", "rwkv7")):
        mixer = build_mixer(name, 64)
        peer = builtin_peers.FlaPeer.like(mixer, which)
        ours, theirs = (sum(p.numel() for p in m.parameters()) for m in (mixer, peer))
        assert abs(ours - theirs) <= 0.01 * ours, (name, ours, theirs)


def test_time_calls_spends_little_on_slow_calls():
    calls = []
    timer = bench.Timer(torch.device("cpu"))
    fast = bench.time_calls(timer, lambda: calls.append(1), warmup=2, reps=5, budget_s=10.0)
    assert len(fast) == 5 and len(calls) == 7
    calls.clear()

    def slow():
        calls.append(1)
        time.sleep(0.03)

    slow_times = bench.time_calls(timer, slow, warmup=4, reps=5, budget_s=0.01)
    assert len(slow_times) == 1 and len(calls) == 3  # two warm-ups, one timed call
    assert slow_times[0] >= 0.03


def test_time_calls_decides_after_the_compiling_call():
    """A first call that compiles is slow; the time that counts is the second call's."""
    calls = []
    timer = bench.Timer(torch.device("cpu"))

    def compiles_once():
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.05)

    times = bench.time_calls(timer, compiles_once, warmup=2, reps=5, budget_s=0.02)
    assert len(times) == 5 and len(calls) == 7


def test_kernel_that_refuses_a_shape_is_na_not_error():
    _, peer = _peer_pair(None, kernel="efficient")  # no memory-efficient SDPA kernel on CPU
    with pytest.raises(RuntimeError) as info:
        peer(torch.randn(1, 8, 32))
    assert run.is_unsupported(info.value) and not run.is_oom(info.value)


def test_killed_bench_keeps_the_points_it_finished(tmp_path, monkeypatch):
    """A bench killed mid-mixer (a wall-clock limit) keeps every point measured before the kill."""
    cfg = bench.BenchConfig(mixers=["nope"], seq_lens=[64, 128], tokens_per_batch=256, d_model=32, peers=[],
                            modes=["fwd"], reps=1)
    orig, calls = bench.Bench.point, []

    def point(self, t, mode, L):
        calls.append(L)
        if L == 128:
            raise KeyboardInterrupt  # what a SIGINT from `timeout` looks like in Python
        return orig(self, t, mode, L)

    monkeypatch.setattr(bench.Bench, "point", point)
    with pytest.raises(KeyboardInterrupt):
        bench.run_bench(cfg, store=Store(tmp_path), progress=False)
    rows = Store(tmp_path).results(kind="bench")
    assert calls == [64, 128] and [(r["seq_len"], r["status"]) for r in rows] == [(64, "ok")]
