"""HSA's two switches for length extrapolation: the auxiliary retrieval loss with in-batch
negatives (`retrieval_loss`, trained on HashHop's answer sources) and the paper's chunk
encoder without positions (`encoder_rope=False`)."""

import functools
import math

import pytest
import torch
from test_hsa import BASE, D
from test_hsa import build as build_eval

from zoo.errors import ZooError
from zoo.mixers.hsa import HSA, retrieval_aux_loss
from zoo.model import ModelConfig, ZooLM
from zoo.registry import get_spec
from zoo.store import Store
from zoo.train import trainer as tr
from zoo.train.config import RunConfig, TaskRef, TrainConfig

S = BASE["chunk_size"]


def build(seed=0, **over) -> HSA:
    """test_hsa's layer (perturbed weights), in training mode."""
    return build_eval(seed, **over).train()


def x_of(length, seed=1, batch=3):
    return torch.randn(batch, length, D, generator=torch.Generator().manual_seed(seed))


def planted_sources(B=3, L=80):
    """Answer positions with sources in visible chunks, one with its source in the open chunk
    (skipped), one whose source chunk completes exactly at p (visible), and -1 elsewhere."""
    src = torch.full((B, L), -1, dtype=torch.long)
    src[0, 70], src[0, 71], src[0, 50] = 5, 20, 40   # chunks 0, 1 and 2 (chunk 2 ends at 48 <= 50)
    src[0, 40] = 35                                   # chunk 2 is still open at 40: skipped
    src[1, 64], src[1, 79] = 47, 63                  # chunk 2 (ends at 48), chunk 3 (ends at 64)
    src[1, 20] = 3                                    # chunk 0 ends at 16 <= 20
    return src


def aux_of(m: HSA, x, src) -> torch.Tensor:
    shared = {"sources": src}
    m(x, shared=shared)
    (value, weight), = shared["aux"]["retrieval_loss"]
    assert weight == m.config.retrieval_loss
    return value


def brute_force(m: HSA, x, src) -> torch.Tensor:
    B, L, _ = x.shape
    Hkv, Dr = m.n_kv_heads, m.retrieval_dim
    C = L // S
    qr = m.ret_norm(m.wq_ret(x).view(B, L, Hkv, Dr)).float()
    lmk = m.encode_chunks(x[:, :C * S])[2].float()
    terms = []
    for b in range(B):
        for p in range(L):
            s = int(src[b, p])
            if s < 0 or (s // S + 1) * S > p:
                continue
            cands = [(b, c) for c in range(C) if (c + 1) * S <= p]
            cands += [(b2, c) for b2 in range(B) if b2 != b for c in range(C)]
            pos = cands.index((b, s // S))
            for h in range(Hkv):
                scores = torch.stack([qr[b, p, h] @ lmk[b2, c, h] for b2, c in cands]) * Dr**-0.5
                terms.append(-torch.log_softmax(scores, 0)[pos])
    return torch.stack(terms).mean()


def test_aux_loss_equals_a_brute_force_over_answer_positions_and_candidates():
    m = build(retrieval_loss=0.5)
    x, src = x_of(80), planted_sources()
    got = aux_of(m, x, src)
    want = brute_force(m, x, src)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # the open-chunk source is skipped: counting it would change the mean
    src2 = src.clone()
    src2[0, 40] = 20  # now in chunk 1, visible at 40
    assert not torch.allclose(aux_of(m, x, src2), got)
    torch.testing.assert_close(aux_of(m, x, src2), brute_force(m, x, src2), rtol=1e-5, atol=1e-6)


def test_scores_stay_fp32_under_bf16_autocast():
    g = torch.Generator().manual_seed(2)
    qr, lmk = torch.randn(2, 64, 1, 16, generator=g), torch.randn(2, 4, 1, 16, generator=g)
    src = torch.full((2, 64), -1, dtype=torch.long)
    src[0, 60], src[1, 50] = 3, 20
    want = retrieval_aux_loss(qr, lmk, src, S)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = retrieval_aux_loss(qr, lmk, src, S)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_no_qualifying_position_gives_zero_with_a_graph():
    m = build(retrieval_loss=1.0)
    x = x_of(80).requires_grad_()
    src = torch.full((3, 80), -1, dtype=torch.long)
    src[0, 10] = 2  # chunk 0 is open at 10
    loss = aux_of(m, x, src)
    assert loss.item() == 0.0
    loss.backward()  # nothing to learn, but a backward through it works


def test_aux_loss_trains_the_landmarks_encoder_and_retrieval_queries():
    m = build(retrieval_loss=1.0).train()
    aux_of(m, x_of(80), planted_sources()).backward()
    grads = {n: p.grad for n, p in m.named_parameters()}
    for name in ("wq_ret.weight", "ret_norm.weight", "w_lmk.weight", "lmk_norm.weight", "cls",
                 "encoder.0.wqkv.weight", "encoder.0.w_down.weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    for name in ("wq_swa.weight", "wv_chunk.weight", "wo.weight"):  # not on the retrieval score's path
        assert grads[name] is None or grads[name].abs().sum() == 0, name


def test_in_batch_negatives_include_the_other_rows_chunks():
    m = build(retrieval_loss=1.0)
    x = x_of(72)  # 4 complete chunks and a partial one (64..71)
    src = torch.full((3, 72), -1, dtype=torch.long)
    src[0, 70] = 20  # one answer position, in row 0
    base = aux_of(m, x, src)
    x2 = x.clone()
    x2[2, :16] += 1.0  # another row's first chunk: a negative only through the batch
    assert not torch.allclose(aux_of(m, x2, src), base)
    x3 = x.clone()
    x3[1, 48:64] += 1.0  # another row's last complete chunk counts, though row 0's own would be visible too
    assert not torch.allclose(aux_of(m, x3, src), base)
    x4 = x.clone()
    x4[1, 64:] += 1.0  # another row's trailing partial chunk is no chunk at all: nothing changes
    torch.testing.assert_close(aux_of(m, x4, src), base)


def test_off_by_default_and_the_forward_is_unchanged():
    assert get_spec("hsa").make_config({}).retrieval_loss == 0.0
    off, on = build(seed=3), build(seed=3, retrieval_loss=2.0)
    assert not off.wants_sources and not off.uses_shared and on.wants_sources
    x = x_of(80)
    shared = {"sources": planted_sources()}
    torch.testing.assert_close(off(x), on(x, shared=shared), rtol=0, atol=0)
    with pytest.raises(ZooError, match="retrieval_loss"):
        get_spec("hsa").make_config({"retrieval_loss": -1.0})


def _lm(weight):
    torch.manual_seed(0)
    return ZooLM(ModelConfig(d_model=D, n_layers=2, layers=["swa", "hsa"],
                             mixer_config={"hsa": {**BASE, "retrieval_loss": weight}}))


def test_the_model_adds_the_weighted_layer_mean_and_weight_zero_is_the_old_loss():
    tokens = torch.randint(0, 200, (3, 80), generator=torch.Generator().manual_seed(0))
    src = planted_sources()
    off, on = _lm(0.0), _lm(0.25)
    assert not off.wants_sources and on.wants_sources
    logits_off = off(tokens)
    logits, aux = on(tokens, sources=src)
    torch.testing.assert_close(logits, logits_off, rtol=0, atol=0)  # same weights, same forward
    assert set(aux) == {"loss", "retrieval_loss"} and aux["retrieval_loss"] > 0
    torch.testing.assert_close(aux["loss"], 0.25 * aux["retrieval_loss"])
    logits0, aux0 = off(tokens, sources=src)  # weight 0: no term, nothing added
    torch.testing.assert_close(logits0, logits_off, rtol=0, atol=0)
    assert aux0 == {"loss": torch.zeros(())}


# -- the chunk encoder without positions ------------------------------------------------------

@pytest.mark.parametrize("rope", [False, True])
def test_encoder_without_rope_sees_its_chunk_as_a_set(rope):
    m = build(encoder_rope=rope).eval()
    xc = x_of(2 * S, batch=2)
    perm = torch.randperm(S, generator=torch.Generator().manual_seed(4))
    xp = xc.clone()
    xp[:, :S] = xc[:, :S][:, perm]  # shuffle the first chunk's tokens
    with torch.no_grad():
        k, v, lmk = m.encode_chunks(xc)
        kp, vp, lmkp = m.encode_chunks(xp)
    torch.testing.assert_close(lmkp[:, 1], lmk[:, 1])  # the other chunk is untouched either way
    if rope:
        assert not torch.allclose(lmkp[:, 0], lmk[:, 0], atol=1e-4)
    else:  # the CLS summary is invariant, the token keys/values permute with the tokens
        torch.testing.assert_close(lmkp[:, 0], lmk[:, 0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(kp[:, :S], k[:, :S][:, perm], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(vp[:, :S], v[:, :S][:, perm], rtol=1e-4, atol=1e-5)


def test_encoder_rope_defaults_on_with_the_same_weights():
    assert get_spec("hsa").make_config({}).encoder_rope is True
    a, b = build(seed=5), build(seed=5, encoder_rope=False)
    assert a.state_dict().keys() == b.state_dict().keys()  # a checkpoint loads either way


# -- training ------------------------------------------------------------------------------------

def _run(task="hashhop", weight=0.5, **train):
    task_cfg = {"hops": [1], "hash_len": 4} if task == "hashhop" else {}
    return RunConfig(
        model=ModelConfig(d_model=D, n_layers=2, layers=["swa", "hsa"],
                          mixer_config={"swa": {"n_heads": 2, "window": 16},
                                        "hsa": {**BASE, "retrieval_loss": weight}}),
        task=TaskRef(name=task, config=task_cfg),
        train=TrainConfig(**{"steps": 3, "batch_size": 3, "seq_len": 128, "threads": 1, "lr": 3e-3,
                             "log_every": 1, "eval_every": 0, **train}))


def _metric(store, run_id, name):
    return [r["value"] for r in store.metrics(run_id) if r["name"] == name]


def test_a_run_with_the_aux_loss_trains_and_logs_it(tmp_path):
    store = Store(tmp_path / "on")
    rid = tr.train(_run(), store).run_id
    aux, loss = _metric(store, rid, "retrieval_loss"), _metric(store, rid, "loss")
    assert len(aux) == 3 and all(v > 0 for v in aux) and len(loss) == 3
    off = Store(tmp_path / "off")
    rid0 = tr.train(_run(weight=0.0), off).run_id
    assert _metric(off, rid0, "retrieval_loss") == []
    assert _metric(off, rid0, "loss")[0] == loss[0]  # the first step's LM loss: same model, same batch


def test_a_run_with_the_aux_loss_compiles(tmp_path, monkeypatch):
    """Under torch.compile (Dynamo's eager backend: the graph capture, without Inductor's
    compile time) the aux loss runs outside the graph and is still trained and logged."""
    import torch._dynamo

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch._dynamo.reset()
    store = Store(tmp_path)
    rid = tr.train(_run(compile=True), store).run_id
    eager = Store(tmp_path / "eager")
    rid_e = tr.train(_run(), eager).run_id
    torch.testing.assert_close(_metric(store, rid, "retrieval_loss"), _metric(eager, rid_e, "retrieval_loss"),
                               rtol=1e-4, atol=1e-5)


def test_the_new_fields_stay_out_of_run_ids_at_their_defaults():
    """Runs stored before the switches existed keep their ids (and so their checkpoints)."""
    plain = _run(weight=0.0)
    hsa = plain.model.mixer_config["hsa"]
    explicit = plain.model_copy(update={"model": plain.model.model_copy(update={"mixer_config": {
        **plain.model.mixer_config, "hsa": {**hsa, "encoder_rope": True, "retrieval_loss": 0.0}}})})
    old = {k: v for k, v in hsa.items() if k != "retrieval_loss"}
    before = plain.model_copy(update={"model": plain.model.model_copy(update={"mixer_config": {
        **plain.model.mixer_config, "hsa": old}})})
    assert plain.run_id() == explicit.run_id() == before.run_id()
    assert "retrieval_loss" not in plain.identity()["model"]["mixer_config"]["hsa"]
    assert "encoder_rope" not in plain.identity()["model"]["mixer_config"]["hsa"]
    assert "cross_row_chunks" not in plain.identity()["model"]["mixer_config"]["hsa"]
    assert _run(weight=0.5).run_id() != plain.run_id()
    no_rope = {**hsa, "encoder_rope": False}
    assert plain.model_copy(update={"model": plain.model.model_copy(update={"mixer_config": {
        **plain.model.mixer_config, "hsa": no_rope}})}).run_id() != plain.run_id()


def test_a_task_without_answer_sources_is_refused(tmp_path):
    with pytest.raises(ZooError, match="retrieval_loss needs a task that provides answer sources") as e:
        tr.train(_run(task="mqar"), Store(tmp_path))
    assert "allowed: hashhop" in str(e.value) and "mqar" in str(e.value)


def test_the_kernel_level_function_matches_the_layer():
    m = build(retrieval_loss=1.0)
    x, src = x_of(80), planted_sources()
    B, L, _ = x.shape
    qr = m.ret_norm(m.wq_ret(x).view(B, L, m.n_kv_heads, m.retrieval_dim))
    lmk = m.encode_chunks(x)[2]
    torch.testing.assert_close(retrieval_aux_loss(qr, lmk, src, S), aux_of(m, x, src))


def test_cross_row_chunks_keeps_the_retrieval_loss_per_row():
    """Reading the batch as one row changes what the selection competes with, not the loss:
    its candidates stay the batch's chunks (in-batch negatives), so the value is the same."""
    x, src = x_of(80), planted_sources()
    on, off = build(retrieval_loss=1.0, cross_row_chunks=True), build(retrieval_loss=1.0)
    torch.testing.assert_close(aux_of(on, x, src), aux_of(off, x, src))


def test_a_run_reading_the_batch_as_one_row_trains(tmp_path):
    """Through the trainer (rows of 128 tokens, whole chunks of 16): the retrieval loss is the
    per-row run's at the first step, the LM loss is not (rows after the first retrieve more)."""
    run = _run()
    hsa = {**run.model.mixer_config["hsa"], "cross_row_chunks": True}
    cross = run.model_copy(update={"model": run.model.model_copy(update={"mixer_config": {
        **run.model.mixer_config, "hsa": hsa}})})
    assert cross.run_id() != run.run_id()
    a, b = Store(tmp_path / "rows"), Store(tmp_path / "cross")
    rid_a, rid_b = tr.train(run, a).run_id, tr.train(cross, b).run_id
    assert _metric(b, rid_b, "retrieval_loss")[0] == pytest.approx(_metric(a, rid_a, "retrieval_loss")[0], rel=1e-5)
    assert _metric(b, rid_b, "loss")[0] != _metric(a, rid_a, "loss")[0]
    assert all(math.isfinite(v) for v in _metric(b, rid_b, "loss"))
