"""`zoo bench`, `zoo bench --list-peers`, `zoo check-peer NAME`: speed and memory of every mixer vs
sequence length, beside the peer kernels; the bench's rich tables."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from zoo.bench.config import MODES, BenchConfig, human_size
from zoo.cli.plugins import broken_table, conformance_table
from zoo.errors import ZooError, invalid

BENCH = BenchConfig.model_fields  # the flags' defaults: one source, the config they fill
LONG_LENS = ",".join(map(human_size, BENCH["long_lens"].get_default(call_default_factory=True)))
MODES_ALL = ",".join(BENCH["modes"].get_default(call_default_factory=True))


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ZooError(f"--mixers '{text}' names no mixer", "e.g. --mixers nope,mamba2, or leave it out for all")
    return names


# -- tables -----------------------------------------------------------------------------------

def peer_ratios(rows: list[dict]) -> dict[tuple[str, str, int], tuple[float, str]]:
    """(mixer, mode, L) -> (our time / fastest peer's time, that peer) where both ran."""
    best: dict[tuple[str, str, int], tuple[float, str]] = {}
    for r in rows:
        if r["target"] == "peer" and r["status"] == "ok":
            key = (r["peer_of"], r["mode"], r["seq_len"])
            if key not in best or r["time_ms"] < best[key][0]:
                best[key] = (r["time_ms"], r["name"])
    out = {}
    for r in rows:
        key = (r["name"], r["mode"], r["seq_len"])
        if r["target"] == "mixer" and r["status"] == "ok" and key in best:
            out[key] = (r["time_ms"] / best[key][0], best[key][1])
    return out


def _cell(r: dict | None, ratio: tuple[float, str] | None) -> str:
    if r is None:
        return ""
    s = r["status"]
    if s == "ok":
        t = r["time_ms"]
        text = f"{t:.3g} ms" if t < 1000 else f"{t / 1e3:.3g} s"
        if ratio is not None:
            colour = "green" if ratio[0] <= 1.1 else ("yellow" if ratio[0] <= 1.5 else "red")
            text += f"\n[{colour}]x{ratio[0]:.2f}[/]"
        return text
    if s == "oom":
        return "[red]OOM[/]"
    if s.startswith("n/a"):
        return "[dim]n/a[/]"
    if s.startswith("skipped"):
        return "[dim]skip[/]"
    return "[red]error[/]"


def tables(result) -> list:
    """Rich tables: per mode, rows = mixers (each followed by its peers), columns = lengths;
    a cell is the median time per call, and under our mixer's time its ratio to the fastest
    peer (x1.00 = as fast; > 1 slower)."""
    rows = result.rows
    ratios = peer_ratios(rows)
    lengths = sorted({r["seq_len"] for r in rows})
    index = {(r["name"], r["mode"], r["seq_len"]): r for r in rows}
    order: list[tuple[str, str]] = []  # (name, kind) in first-seen order, peers after their mixer
    for r in rows:
        if (r["name"], r["target"]) not in order:
            order.append((r["name"], r["target"]))
    out = []
    tok = result.config.get("tokens_per_batch")
    for mode in [m for m in MODES if any(r["mode"] == m for r in rows)]:
        what = {"fwd": f"forward, {tok} tokens per call", "fwdbwd": f"forward + backward, {tok} tokens per call",
                "decode": f"one decode step, batch {tok} // L, cache filled to L"}[mode]
        t = Table(title=f"{mode}: median time per call ({what}); xN = ours / fastest peer",
                  title_justify="left")
        t.add_column("name", no_wrap=True)
        t.add_column("backend", overflow="fold", max_width=24)
        for L in lengths:
            t.add_column(human_size(L), justify="right")
        for name, kind in order:
            cells = [index.get((name, mode, L)) for L in lengths]
            if not any(cells):
                continue
            backend = next((c["backend"] for c in cells if c and c["backend"]), "")
            label = f"  [dim]{name}[/]" if kind == "peer" else name
            t.add_row(label, f"[dim]{backend}[/]",
                      *[_cell(c, ratios.get((name, mode, L))) for c, L in zip(cells, lengths)])
        out.append(t)
    ct = Table(title="device ceilings", title_justify="left")
    for col in ("what", "value", "unit"):
        ct.add_column(col)
    for c in result.ceilings:
        ct.add_row(str(c.get("what")), f"{c['value']:.4g}" if c.get("value") is not None else "n/a",
                   str(c.get("unit") or ""))
    out.append(ct)
    if result.skipped_peers:
        st = Table(title="peers not run", title_justify="left")
        st.add_column("peer")
        st.add_column("why")
        for k, v in result.skipped_peers.items():
            st.add_row(escape(k), escape(v))  # reasons such as "pip install 'mixer-zoo[gpu]'" print as written
        out.append(st)
    return out


def peers_table(device) -> Table:
    """Every registered peer: the mixer it stands beside, what runs, where it comes from, and
    whether it can run on `device`."""
    from zoo.bench.peers import PEERS, peers

    t = Table(title=f"bench peers (available on {device.type})", title_justify="left")
    for col in ("name", "beside", "what runs", "here", "source"):
        t.add_column(col, no_wrap=col == "name")
    for p in peers():
        why = p.check(device)
        t.add_row(escape(p.name), escape(p.peer_of), escape(p.description),
                  "[green]yes[/]" if why is None else f"[dim]no: {escape(why)}[/]", escape(PEERS.source(p.name)))
    return t


def register(app: typer.Typer) -> None:
    from zoo.cli import console

    @app.command("bench")
    def bench(
        mixers: str = typer.Option(None, "--mixers", help="comma-separated registry names (default: all)"),
        seq_lens: str = typer.Option(None, "--seq-lens",
                                     help="lengths, k/m suffixes, or a doubling range like 1k..128k; "
                                          "lengths >= 1m run for linear mixers only "
                                          "(default: 1k..128k on GPU, 256,1k,4k on CPU)"),
        long: bool = typer.Option(None, "--long/--no-long",
                                  help="add --long-lens for linear mixers, fwd and decode "
                                       "(default: on when --seq-lens reach 1m)"),
        long_lens: str = typer.Option(LONG_LENS, "--long-lens", help="the long lengths"),
        tokens_per_batch: str = typer.Option(None, "--tokens-per-batch", help="batch = tokens // L (at least 1; "
                                             "default 128k on GPU, 8k on CPU)"),
        d_model: int = typer.Option(None, "--d-model", help="layer width (default 1024 on GPU, 256 on CPU)"),
        mode: str = typer.Option(MODES_ALL, "--mode", "--modes", help="any of fwd, fwdbwd, decode"),
        dtype: str = typer.Option(BENCH["dtype"].default, "--dtype", help="bf16, fp16 or fp32"),
        device: str = typer.Option(BENCH["device"].default, "--device", help="auto, cuda or cpu"),
        peers: str = typer.Option("all", "--peers", help="all, none, or comma-separated peer names"),
        model: bool = typer.Option(BENCH["model"].default, "--model", help="also time a whole ZooLM per mixer"),
        n_layers: int = typer.Option(BENCH["n_layers"].default, "--n-layers", help="layers of the --model targets"),
        warmup: int = typer.Option(None, "--warmup", help="warm-up calls (default 2 on GPU, 1 on CPU)"),
        reps: int = typer.Option(None, "--reps", help="timed calls at most (default 20 on GPU, 3 on CPU)"),
        point_budget: float = typer.Option(BENCH["point_budget_s"].default, "--point-budget",
                                           help="seconds of timing per point (>= 3 calls)"),
        max_call_s: float = typer.Option(BENCH["max_call_s"].default, "--max-call-s",
                                         help="skip longer lengths predicted slower than this per call"),
        budget_s: float = typer.Option(None, "--budget-s",
                                       help="wall-clock budget: each mixer and its peers get a share; "
                                            "points past it are rows marked skipped"),
        fill_chunk: str = typer.Option(human_size(BENCH["fill_chunk"].default), "--fill-chunk",
                                       help="tokens per chunk when filling decode caches"),
        json_out: Path = typer.Option(None, "--json", help="also write every row and the ceilings to this file"),
        root: Path = typer.Option(None, "--root", help="results store root (default $ZOO_ROOT or ./zoo-runs)"),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="show the progress bar"),
        list_peers: bool = typer.Option(False, "--list-peers",
                                        help="list the registered peers (built-in and plugin) and exit"),
    ) -> None:
        """Time each mixer layer (and its peer kernels) per sequence length: median time with CUDA
        events, tokens/s, TFLOP/s, peak memory; fwd, fwd+bwd and decode. Rows go to the results
        store (kind "bench", device ceilings as kind "ceiling") and to --json."""
        from pydantic import ValidationError

        from zoo.bench import BenchConfig, get_peer, parse_size, parse_sizes, run_bench, status_counts
        from zoo.bench.peers import PEERS
        from zoo.env import resolve_device
        from zoo.store import Store

        if list_peers:
            console.print(peers_table(resolve_device(device)))
            broken_table(PEERS)
            return
        modes = _names(mode) or []
        bad = [m for m in modes if m not in ("fwd", "fwdbwd", "decode")]
        if bad or not modes:
            raise ZooError(f"unknown mode(s): {', '.join(bad) or '(none)'}", "use fwd, fwdbwd, decode")
        if peers.strip() == "all":
            peer_list = None
        elif peers.strip() == "none":
            peer_list = []
        else:
            peer_list = _names(peers)
            for p in peer_list:
                get_peer(p)  # unknown names: one line with the nearest names
        try:
            cfg = BenchConfig(
                mixers=_names(mixers) or [], seq_lens=parse_sizes(seq_lens) if seq_lens else None, long=long,
                long_lens=parse_sizes(long_lens),
                tokens_per_batch=parse_size(tokens_per_batch) if tokens_per_batch else None, d_model=d_model,
                modes=modes, dtype=dtype,
                device=device, peers=peer_list, model=model, n_layers=n_layers, warmup=warmup, reps=reps,
                point_budget_s=point_budget, max_call_s=max_call_s, budget_s=budget_s,
                fill_chunk=parse_size(fill_chunk),
            )
        except ValidationError as e:
            raise invalid(e, "bench setting", "see `zoo bench --help`") from None
        store = Store(root)
        try:
            result = run_bench(cfg, store=store, json_path=json_out, console=console, progress=progress)
        finally:
            store.close()  # checkpoints the WAL, so zoo.db alone holds every row (it gets copied off GPU machines)
        for t in tables(result):
            console.print(t)
        console.print(f"bench run [bold]{result.run_id}[/]: {len(result.rows)} rows ({status_counts(result.rows)}) "
                      f"in {result.seconds:.0f} s -> {store.path}" + (f" and {json_out}" if json_out else ""))

    @app.command("check-peer")
    def check_peer(
        name: str = typer.Argument(..., help="name of the bench peer to test (see `zoo bench --list-peers`)"),
        device: str = typer.Option("auto", "--device", help="auto, cuda or cpu"),
    ) -> None:
        """Run the bench-peer conformance checks on one peer: it runs at small shapes, is causal,
        decodes as it forwards, computes its mixer's layer on the mixer's weights (where it claims
        to), declares the shapes it cannot run in one line, and the bench times it."""
        from zoo.bench import conformance

        conformance_table(f"bench peer '{name}'", conformance.run_all(name, device))
