"""`zoo bench`: how each mixer's time and memory grow with sequence length, beside the peer kernels.

The package, one module per job:

    config         lengths (`1k..128k`), the device's defaults, `BenchConfig`
    timing         `Timer` (CUDA events or perf_counter), `time_calls` (warm-up, budget, median)
    targets        what gets timed: a mixer layer, a peer layer, a whole ZooLM
    peers          the peer contract and the `zoo.bench_peers` registry
    builtin_peers  torch SDPA, FlexAttention, flash-attn, mamba_ssm and fla beside our mixers
    conformance    `zoo check-peer`: a peer runs, decodes, and computes its mixer's layer
    run            the loop, the ceilings, the store and the JSON

The rich tables are the command line's (`zoo.cli.bench`); the progress bar is the shared `zoo.progress`.

FLOPs. Forward FLOPs per token come from `Mixer.flops_per_token(L)`, a count each mixer
derives and states itself (matmuls at 2 FLOPs per multiply-add, averaged over the causal
context). fwdbwd counts 3x the forward: the backward runs two matmuls per forward matmul,
one for the input and one for the weight gradient (Kaplan et al. 2020, Scaling Laws for
Neural Language Models, arXiv:2001.08361, section 2.1). A decode step at context L costs
the marginal FLOPs of one more token, (L+1) f(L+1) - L f(L) with f = flops_per_token.
Peers are counted with the formula of the mixer they stand beside (same shapes, same work).

Memory. `torch.cuda.max_memory_allocated` over the timed calls, minus what other resident
targets hold, so a row's `peak_mem_bytes` is its own weights, inputs, activations, gradients
and cache. CPU has no comparable allocator counter: n/a.

Rows (store kind "bench", one per target x mode x length; None where not measured):
    run_id, target ("mixer" | "peer" | "model"), name, mixer (the registry mixer the row is
    about), peer_of (peers only), mode, seq_len, batch, tokens (per call), d_model, dtype,
    device, cost, backend (what actually ran), status ("ok" | "oom" | "n/a: ..." |
    "skipped: ..." | "error: ..."), time_ms (median per call), time_ms_min, reps,
    tokens_per_s, flops_per_token (forward; decode: the marginal token), flop_factor (3 for
    fwdbwd), tflops, peak_mem_bytes, params, decode only: fill_ms, fill_peak_mem_bytes,
    cache_bytes (measured at L), state_bytes (the mixer's declared state_bytes(L)), decode_gbps
    ((cache + weights) bytes per step / step time: a floor on the bandwidth a step needs).
Ceilings (store kind "ceiling"): name ("matmul" | "copy"), what, value, unit, time_ms, device.
"""

from zoo.bench.config import BenchConfig, human_size, parse_size, parse_sizes
from zoo.bench.peers import PEERS, Peer, get_peer, peer_names, peers, register_peer
from zoo.bench.run import Bench, BenchResult, run_bench, status_counts
from zoo.bench.timing import Timer, time_calls

__all__ = ["PEERS", "Bench", "BenchConfig", "BenchResult", "Peer", "Timer", "get_peer", "human_size", "parse_size",
           "parse_sizes", "peer_names", "peers", "register_peer", "run_bench", "status_counts", "time_calls"]
