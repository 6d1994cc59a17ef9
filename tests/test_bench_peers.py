"""Bench peers: the registry (unknown names, clashes), `zoo bench --list-peers`, `zoo check-peer` on
the built-ins that run here, on peers that break the contract, and on the example plugin's peer."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from test_plugins import EXAMPLE, pip_install, zoo_cli

from zoo import conformance as mixer_conformance
from zoo import registry
from zoo.bench import conformance
from zoo.bench.builtin_peers import SdpaPeer
from zoo.bench.peers import PEERS, Peer, get_peer, peer_names
from zoo.cli import main
from zoo.errors import ZooError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@contextlib.contextmanager
def registered(*peers: Peer):
    """Peers registered for the duration of a test, then forgotten."""
    PEERS.ensure_loaded()
    for p in peers:
        PEERS.add(p.name, p)
    try:
        yield
    finally:
        for p in peers:
            PEERS.items.pop(p.name)
            PEERS.sources.pop(p.name)


def test_unknown_peer_is_one_line_with_a_suggestion(capsys):
    with pytest.raises(ZooError) as info:
        get_peer("sdpa-mat")
    assert "\n" not in str(info.value) and "did you mean 'sdpa-math'" in str(info.value)
    assert main(["bench", "--peers", "sdpa-fast", "--no-progress"]) == 2
    assert main(["check-peer", "sdpa-mat"]) == 2
    out = capsys.readouterr()
    assert "unknown peer 'sdpa-fast'" in out.err + out.out
    assert "did you mean 'sdpa-math'" in out.err + out.out


def test_a_peer_name_registered_twice_names_both():
    twin = Peer("sdpa-math", "nope", "another math kernel", lambda m, d, t: SdpaPeer.like(m, kernel="math"))
    with pytest.raises(ZooError, match="registered twice"):
        PEERS.add(twin.name, twin)


def test_list_peers_names_each_peer_and_its_mixer(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["bench", "--list-peers", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for name in peer_names():
        assert name in out
    assert "mamba_ssm-mamba2 │ mamba2" in out
    assert "the cudnn SDPA kernel runs on CUDA only" in out  # why a peer cannot run here


def test_check_peer_passes_on_the_peers_that_run_here(capsys):
    assert main(["check-peer", "sdpa-math", "--device", "cpu"]) == 0
    results = conformance.run_all("sdpa-flash", "cpu")
    assert results["unsupported"] == ("n/a", "declares no unsupported shapes")
    assert all(outcome == "pass" for k, (outcome, _) in results.items() if k != "unsupported"), results
    # a peer that cannot run on this device cannot be checked here, and says so in one line
    assert main(["check-peer", "sdpa-cudnn", "--device", "cpu"]) == 2
    assert "cannot run on cpu: the cudnn SDPA kernel runs on CUDA only" in capsys.readouterr().err


class NotCausal(SdpaPeer):
    def core(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


class ForgetfulDecode(SdpaPeer):
    def core_decode(self, q, k, v, pos):
        return F.scaled_dot_product_attention(q, k[:, :, pos:pos + 1], v[:, :, pos:pos + 1])


class RefusesLongCalls(SdpaPeer):
    def unsupported(self, B, L):
        return "too long\nfor this kernel" if L > 100 else None


def test_check_peer_fails_peers_that_break_the_contract():
    """Each broken peer fails the check that guards what it breaks, and the command exits non-zero."""
    def peer(name, cls, **kw):
        return Peer(name, "nope", "broken on purpose", lambda m, d, t: cls.like(m, kernel="math"),
                    matches_mixer=True, **kw)

    with registered(peer("not-causal", NotCausal), peer("forgetful", ForgetfulDecode),
                    peer("no-declaration", SdpaPeer, unsupported_example=(1, 2**20)),
                    peer("two-lines", RefusesLongCalls, unsupported_example=(1, 2**20))):
        failed = {name: {k for k, (outcome, _) in conformance.run_all(name, "cpu").items() if outcome == "fail"}
                  for name in ("not-causal", "forgetful", "no-declaration", "two-lines")}
    assert failed["not-causal"] == {"causal", "decode", "matches_mixer"}
    assert failed["forgetful"] == {"decode"}
    assert failed["no-declaration"] == {"unsupported"}
    assert failed["two-lines"] == {"unsupported"}  # declares the 200-token check shape, with two lines


def test_check_peer_exits_non_zero_on_a_failure(capsys):
    broken = Peer("not-causal", "nope", "broken on purpose", lambda m, d, t: NotCausal.like(m, kernel="math"))
    with registered(broken):
        assert main(["check-peer", "not-causal", "--device", "cpu"]) == 2
    assert "bench peer 'not-causal' fails 2 conformance checks: causal, decode" in capsys.readouterr().err


@pytest.fixture(scope="module")
def example_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("example_peer") / "site"
    pip_install(EXAMPLE, site)
    return site


def test_example_plugin_peer_is_listed_and_passes_check_peer(example_site):
    listed = zoo_cli("bench", "--list-peers", "--device", "cpu", site=example_site)
    assert listed.returncode == 0, listed.stderr
    assert "glr-loop" in listed.stdout and "short-conv-glr" in listed.stdout and "zoo-example-mixer" in listed.stdout
    checked = zoo_cli("check-peer", "glr-loop", "--device", "cpu", site=example_site)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for check in conformance.CHECKS:
        assert check in checked.stdout
    assert "FAIL" not in checked.stdout and "n/a" not in checked.stdout
    # the plugin's mixer stays its package's, though the peer module imports that package
    mixers = zoo_cli("mixers", site=example_site)
    assert "zoo-example-mixer" in next(line for line in mixers.stdout.splitlines() if "short-conv-glr" in line)


def test_check_peer_needs_a_device_it_can_run_on():
    with pytest.raises(ZooError, match="cannot run on cpu"):
        conformance.case_for("flex", "cpu")


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("name", ["flex", "flex-alibi", "flex-t5", "flex-swa"])
def test_flex_peers_keep_the_contract_eagerly(name):
    """FlexAttention peers are timed compiled on CUDA only; run eagerly here, they still run,
    stay causal, decode as they forward and (where they claim it) compute their mixer's layer."""
    peer = get_peer(name)
    cpu = torch.device("cpu")
    mixer = mixer_conformance.make(registry.get_spec(peer.peer_of))
    case = conformance.PeerCase(peer, mixer, peer.make(mixer, cpu, torch.float32), cpu, torch.float32)
    for check in ("forward", "causal", "decode", "matches_mixer", "unsupported"):
        conformance.CHECKS[check](case)
