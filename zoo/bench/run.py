"""The bench loop: every target x length x mode a row, the device ceilings, the store and the JSON.

For every selected mixer (one layer at `d_model`, its default config, built through the
registry) and every sequence length L, with batch B = max(1, tokens_per_batch // L):

    fwd      forward only, no autograd (prefill)
    fwdbwd   forward + backward of the layer, input gradient included (one layer of a training step)
    decode   latency of one single-token step with a cache already filled to L tokens; the cache
             is filled through the mixer's own chunked forward, `fill_chunk` tokens at a time, so
             attention decodes over a grown KV cache while recurrent mixers hold a fixed state

Each mixer forms a group with its peers (`zoo.bench.peers`) and, with `model`, a whole ZooLM.
No failure stops the bench: out of memory is a row with status "oom", a length past the
mixer's `max_length` is "n/a: max_length", a shape a peer's kernel would crash the process on
(`Target.unsupported`) is "n/a: <why>", any other exception is "error: ...", and points
predicted to exceed `max_call_s` or the bench's `budget_s` are "skipped: ..." with the reason.
With a budget, each mixer (with its peers) gets a share of the time left, so a run cut short
still covers every mixer; what it loses are the longest lengths.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zoo import env, registry
from zoo.bench.config import DTYPES, FLOP_FACTOR, LONG_MIN, LONG_MODES, BenchConfig, human_size
from zoo.bench.peers import get_peer, peers
from zoo.bench.targets import MixerTarget, ModelTarget, PeerTarget, Target, decode_flops
from zoo.bench.timing import Timer, time_calls
from zoo.env import is_oom
from zoo.errors import LengthError


def is_unsupported(e: BaseException) -> bool:
    msg = str(e)
    return isinstance(e, RuntimeError) and ("No available kernel" in msg or "No viable backend" in msg)


def _short(e: BaseException, limit: int = 300) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:limit]}" if msg else type(e).__name__


@dataclass
class Tracker:
    """Per (target, mode): what happened at shorter lengths, to skip hopeless longer ones."""

    oom_at: int | None = None
    last: tuple[int, int, float] | None = None  # (L, B, seconds per call or fill)


def predicted_seconds(target: Target, prev: tuple[int, int, float], L: int, B: int) -> float:
    """Scale a measured call to (L, B): work ~ B L, times L again for quadratic mixers."""
    L0, B0, t0 = prev
    scale = (B * L) / (B0 * L0)
    if target.quadratic:
        scale *= L / L0
    return t0 * scale


def _matmul_times(timer: Timer, n: int, device, dtype, warmup: int, reps: int) -> list[float]:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return time_calls(timer, lambda: a @ b, warmup, reps, 2.0)


def _copy_times(timer: Timer, nbytes: int, device, warmup: int, reps: int) -> list[float]:
    x = torch.empty(nbytes // 2, device=device, dtype=torch.bfloat16).uniform_()
    y = torch.empty_like(x)
    return time_calls(timer, lambda: y.copy_(x), warmup, reps, 2.0)


class Bench:
    """Runs a `BenchConfig`: targets x lengths x modes, the ceilings, the store and the JSON."""

    def __init__(self, cfg: BenchConfig, console=None, progress: bool = True):
        self.cfg = cfg
        self.device = cfg.resolved_device()
        self.dtype = DTYPES[cfg.dtype]
        self.timer = Timer(self.device)
        self.cuda = self.device.type == "cuda"
        self.warmup = cfg.warmup if cfg.warmup is not None else (2 if self.cuda else 1)
        self.reps = cfg.reps if cfg.reps is not None else (20 if self.cuda else 3)
        self.console = console
        self.progress = progress
        self.device_name = env.device_name(self.device)
        self.mixer_names = self._mixers()
        self.groups, self.skipped_peers = self._groups()
        self.targets = [t for g in self.groups for t in g]
        self.trackers: dict[tuple[str, str], Tracker] = {}
        self.deadline: float | None = None  # of the whole bench
        self.group_deadline: float | None = None  # of the mixer group being measured

    # -- plan -------------------------------------------------------------------------------
    def _mixers(self) -> list[str]:
        names = self.cfg.mixers or registry.names()
        for n in names:
            registry.get_spec(n)  # unknown names: one line with suggestions
        return list(dict.fromkeys(names))

    def _groups(self) -> tuple[list[list[Target]], dict[str, str]]:
        """Per mixer, one group: the mixer, its peers, its whole-model target."""
        wanted = self.cfg.peers
        for p in wanted or []:
            get_peer(p)  # unknown names: one line with suggestions
        groups: list[list[Target]] = []
        skipped: dict[str, str] = {}
        for name in self.mixer_names:
            mt = MixerTarget(registry.get_spec(name), self.cfg.d_model)
            group: list[Target] = [mt]
            for p in peers():
                if p.peer_of != name or (wanted is not None and p.name not in wanted):
                    continue
                why = p.check(self.device)
                if why is not None:
                    skipped[p.name] = why
                group.append(PeerTarget(p, mt, unavailable=why))
            if self.cfg.model:
                group.append(ModelTarget(registry.get_spec(name), self.cfg.d_model, self.cfg.n_layers))
            groups.append(group)
        return groups, skipped

    def config_dict(self) -> dict:
        c = self.cfg.model_dump()
        c.update(mixers=self.mixer_names, lengths=self.cfg.lengths(), warmup=self.warmup, reps=self.reps)
        return c

    def run_id(self) -> str:
        from zoo.store import config_id, git_commit

        return "bench-" + config_id({"kind": "bench", "config": self.config_dict(), "device": self.device_name,
                                     "versions": env.versions(), "commit": git_commit()})

    # -- ceilings ---------------------------------------------------------------------------
    def ceilings(self) -> list[dict]:
        """Device limits measured here: a large matmul (TFLOP/s) and a device-to-device copy (GB/s,
        bytes read + written). Tiny versions on CPU."""
        n = 8192 if self.cuda else 256
        copy_bytes = 2**30 if self.cuda else 2**24
        warmup = max(self.warmup, 1)
        rows = []
        try:
            t = statistics.median(_matmul_times(self.timer, n, self.device, self.dtype, warmup, self.reps))
            rows.append({"name": "matmul", "what": f"{self.cfg.dtype} {n}x{n} @ {n}x{n}, random data",
                         "value": 2 * n**3 / t / 1e12, "unit": "TFLOP/s", "time_ms": t * 1e3})
            t = statistics.median(_copy_times(self.timer, copy_bytes, self.device, warmup, self.reps))
            where = "device-to-device" if self.cuda else "host memory"
            rows.append({"name": "copy", "what": f"{where} copy of {copy_bytes // 2**20} MiB (bytes read + written)",
                         "value": 2 * copy_bytes / t / 1e9, "unit": "GB/s", "time_ms": t * 1e3})
        except Exception as e:  # a ceiling that cannot be measured is recorded, never fatal
            rows.append({"name": "error", "what": _short(e), "value": None, "unit": None})
        for r in rows:
            r["device"] = self.device_name
        self._free()
        return rows

    # -- points -----------------------------------------------------------------------------
    def base_row(self, t: Target, mode: str, L: int, B: int) -> dict:
        return {
            "target": t.kind, "name": t.name, "mixer": t.mixer, "peer_of": t.peer_of, "mode": mode,
            "seq_len": L, "batch": B, "tokens": B * L if mode != "decode" else B, "d_model": self.cfg.d_model,
            "dtype": self.cfg.dtype, "device": self.device_name, "cost": t.cost, "backend": None,
            "status": None, "time_ms": None, "time_ms_min": None, "reps": 0, "tokens_per_s": None,
            "flops_per_token": None, "flop_factor": FLOP_FACTOR[mode], "tflops": None,
            "peak_mem_bytes": None, "params": None, "cache_bytes": None, "state_bytes": None,
            "fill_ms": None, "fill_peak_mem_bytes": None, "decode_gbps": None,
        }

    def _free(self, collect: bool = False) -> None:
        """Give cached blocks back so each point starts alike; `collect` after a failure, whose
        traceback cycles can keep tensors alive (a full gc costs about half a second)."""
        if collect:
            gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def _skip_reason(self, t: Target, mode: str, L: int, B: int) -> str | None:
        if getattr(t, "unavailable", None):
            return f"skipped: {t.unavailable}"
        if L >= LONG_MIN:
            if t.quadratic:
                return f"skipped: {t.cost} mixer; lengths >= {human_size(LONG_MIN)} run for linear mixers only"
            if mode not in LONG_MODES:
                return f"skipped: lengths >= {human_size(LONG_MIN)} run {' and '.join(LONG_MODES)} only"
        if self.group_deadline is not None and time.perf_counter() > self.group_deadline:
            return (f"skipped: this mixer's share of the {self.cfg.budget_s:.0f} s bench budget "
                    f"({self.group_share:.0f} s) is spent")
        tr = self.trackers.get((t.name, mode))
        if tr is not None and tr.oom_at is not None:
            return f"skipped: out of memory already at L={tr.oom_at}"
        if tr is not None and tr.last is not None:
            pred = predicted_seconds(t, tr.last, L, B)
            if pred > self.cfg.max_call_s:
                return f"skipped: predicted {pred:.0f} s per call from L={tr.last[0]}, over max_call_s"
        return None

    def point(self, t: Target, mode: str, L: int) -> dict:
        B = max(1, self.cfg.tokens_per_batch // L)
        row = self.base_row(t, mode, L, B)
        skip = self._skip_reason(t, mode, L, B)
        if skip is not None:
            row["status"] = skip
            return row
        try:
            t.ensure_built(self.device, self.dtype)
        except Exception as e:
            t.build_error = _short(e)
        if t.build_error is not None:
            row["status"] = f"error: build: {t.build_error}"
            return row
        row["params"] = t.num_params()
        limit = t.max_length()
        if limit is not None and L + (1 if mode == "decode" else 0) > limit:
            row["status"] = "n/a: max_length"
            row["note"] = f"runs at most {limit} tokens"
            return row
        why = t.unsupported(B, L)
        if why is not None:
            row["status"] = f"n/a: {why}"
            return row
        tr = self.trackers.setdefault((t.name, mode), Tracker())
        try:
            self._measure(t, mode, L, B, row)
            row["status"] = "ok"
            # the first fill of a target compiles its kernels: predicting from it skipped rerope's decode
            fill = (row["fill_ms"] or 0) / 1e3 if tr.last is not None else 0.0
            tr.last = (L, B, max(row["time_ms"] / 1e3, fill))
        except LengthError:
            row["status"] = "n/a: max_length"
        except Exception as e:
            if is_oom(e):
                row["status"] = "oom"
                tr.oom_at = L
            elif is_unsupported(e):  # e.g. an SDPA kernel that does not take this shape
                row["status"] = f"n/a: {_short(e)}"
            else:
                row["status"] = f"error: {_short(e)}"
        finally:
            t.zero_grad()
        if row["status"] != "ok":
            for k in ("time_ms", "time_ms_min", "tokens_per_s", "tflops", "fill_ms", "decode_gbps", "peak_mem_bytes",
                      "fill_peak_mem_bytes"):
                row[k] = None
            row["reps"] = 0
        self._free(collect=row["status"] != "ok")
        return row

    def _measure(self, t: Target, mode: str, L: int, B: int, row: dict) -> None:
        self._free()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            resident = torch.cuda.memory_allocated(self.device) - t.param_bytes()
        x = t.inputs(B, L, self.device, self.dtype)
        if mode == "fwd":
            def fn():
                with torch.no_grad():
                    t.call(x)
            times = time_calls(self.timer, fn, self.warmup, self.reps, self.cfg.point_budget_s)
            work_tokens = B * L
        elif mode == "fwdbwd":
            gy = t.grad_output(x)
            if x.is_floating_point():
                x.requires_grad_(True)  # a layer inside a model also returns its input gradient

            def fn():
                t.backward(t.call(x), gy)

            def before():
                t.zero_grad()
                x.grad = None

            times = time_calls(self.timer, fn, self.warmup, self.reps, self.cfg.point_budget_s, before)
            work_tokens = B * L
        else:
            x1 = t.inputs(B, 1, self.device, self.dtype)
            extra = self.warmup + self.reps + 1
            state: list[Any] = []

            def fill():
                with torch.no_grad():
                    state.append(t.prefill(x, self.cfg.fill_chunk, extra))

            row["fill_ms"] = self.timer.wall(fill) * 1e3
            st = state[0]
            if self.cuda:
                row["fill_peak_mem_bytes"] = int(torch.cuda.max_memory_allocated(self.device) - resident)
            row["cache_bytes"] = t.state_nbytes(st)  # at exactly L tokens, beside the declared state_bytes(L)
            row["state_bytes"] = t.declared_state_bytes(L, B, self.dtype)
            del x
            if self.cuda:
                torch.cuda.reset_peak_memory_stats(self.device)

            def fn():
                with torch.no_grad():
                    t.step(st, x1)

            times = time_calls(self.timer, fn, self.warmup, self.reps, self.cfg.point_budget_s)
            work_tokens = B
        med = statistics.median(times)
        row["backend"] = t.backend()
        row.update(time_ms=med * 1e3, time_ms_min=min(times) * 1e3, reps=len(times), tokens_per_s=work_tokens / med)
        fpt = t.flops_per_token(L)
        if fpt is not None:
            per = decode_flops(t.flops_per_token, L) if mode == "decode" else fpt
            row["flops_per_token"] = per
            row["tflops"] = per * FLOP_FACTOR[mode] * work_tokens / med / 1e12
        if mode == "decode" and row["cache_bytes"] is not None:
            row["decode_gbps"] = (row["cache_bytes"] + t.param_bytes()) / med / 1e9
        if self.cuda:
            torch.cuda.synchronize()
            row["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated(self.device) - resident)

    # -- the whole run ----------------------------------------------------------------------
    def plan(self, group: list[Target]) -> list[tuple[int, Target, str]]:
        return [(L, t, mode) for L in self.cfg.lengths() for t in group for mode in self.cfg.modes]

    def _start_group(self, i: int) -> None:
        """With a budget, each mixer group gets the time left times its share of the targets still
        to run (peers that cannot run here weigh nothing); what a group leaves goes to the next."""
        if self.deadline is None:
            return
        weight = lambda g: sum(not getattr(t, "unavailable", None) for t in g)
        left = sum(weight(g) for g in self.groups[i:])
        now = time.perf_counter()
        self.group_share = max(0.0, self.deadline - now) * weight(self.groups[i]) / max(left, 1)
        self.group_deadline = now + self.group_share

    def run(self, store=None, json_path: str | Path | None = None) -> BenchResult:
        from zoo.store import provenance

        start = time.perf_counter()
        if self.cfg.budget_s is not None:
            self.deadline = start + self.cfg.budget_s
            self.group_share = 0.0
        run_id = self.run_id()
        prov = provenance(device=self.device)
        config = self.config_dict()
        result = BenchResult(run_id, config, prov, skipped_peers=dict(self.skipped_peers))
        if store is not None:
            store.upsert_run(run_id, config, kind="bench", status="running", provenance=prov)
            store.add_results(run_id, "bench", [], replace=True)  # a re-run replaces the earlier rows
        result.ceilings = self.ceilings()
        if store is not None:
            store.add_results(run_id, "ceiling", result.ceilings, replace=True)

        total = sum(len(self.plan(g)) for g in self.groups)
        with _progress(self.console, self.progress, total) as bar:
            for i, group in enumerate(self.groups):
                self._start_group(i)
                t0, rows = time.perf_counter(), []
                for L, t, mode in self.plan(group):
                    bar.describe(f"{t.name} {mode} L={human_size(L)}")
                    row = self.point(t, mode, L)
                    row["run_id"] = run_id
                    rows.append(row)
                    result.rows.append(row)
                    if store is not None:  # a bench that is killed keeps every finished point in the store
                        store.add_results(run_id, "bench", [row])
                    bar.advance()
                if json_path is not None:  # and in the JSON, every finished mixer
                    result.write_json(json_path)
                for t in group:  # weights and compiled kernels of finished groups leave the device
                    t.module = None
                self._free(collect=True)
                bar.log(f"[{i + 1}/{len(self.groups)}] {group[0].name}: {status_counts(rows)} "
                        f"in {time.perf_counter() - t0:.0f} s")
        result.seconds = time.perf_counter() - start
        if store is not None:
            n_bad = sum(r["status"].startswith("error") for r in result.rows)
            store.upsert_run(run_id, config, kind="bench", status="done", provenance=prov,
                             summary={"rows": len(result.rows), "errors": n_bad, "seconds": result.seconds,
                                      "skipped_peers": self.skipped_peers})
        if json_path is not None:
            result.write_json(json_path)
        return result


@dataclass
class BenchResult:
    run_id: str
    config: dict
    provenance: dict
    rows: list[dict] = field(default_factory=list)
    ceilings: list[dict] = field(default_factory=list)
    skipped_peers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def write_json(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps({"run_id": self.run_id, "config": self.config, "provenance": self.provenance,
                                   "ceilings": self.ceilings, "skipped_peers": self.skipped_peers,
                                   "seconds": self.seconds, "rows": self.rows}, indent=1, default=str))
        tmp.replace(path)


def status_counts(rows: list[dict]) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        key = r["status"].split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))


class _progress:
    """The bench's progress (the shared `zoo.progress.Progress`): `describe` and `advance`."""

    def __init__(self, console, enabled: bool, total: int):
        from zoo.progress import Progress

        self.p = Progress(console, "bench", total, unit="point", enabled=enabled and console is not None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.p.close()

    def describe(self, text: str) -> None:
        self.p.update(description=f"bench {text}")

    def advance(self) -> None:
        self.p.update(advance=1)

    def log(self, text: str) -> None:
        """A line above the bar (in a log file, between the periodic progress lines)."""
        self.p.log(text)


def run_bench(cfg: BenchConfig, store=None, json_path: str | Path | None = None, console=None,
              progress: bool = True) -> BenchResult:
    """Measure, write the store and the JSON, return the result (rows and ceilings)."""
    return Bench(cfg, console=console, progress=progress).run(store=store, json_path=json_path)
