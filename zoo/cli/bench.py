"""`zoo bench`: speed and memory of every mixer vs sequence length, beside the peer kernels."""

from __future__ import annotations

from pathlib import Path

import typer

from zoo.errors import ZooError, invalid


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ZooError(f"--mixers '{text}' names no mixer", "e.g. --mixers nope,mamba2, or leave it out for all")
    return names


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
        long_lens: str = typer.Option("1m", "--long-lens", help="the long lengths"),
        tokens_per_batch: str = typer.Option(None, "--tokens-per-batch", help="batch = tokens // L (at least 1; "
                                             "default 128k on GPU, 8k on CPU)"),
        d_model: int = typer.Option(None, "--d-model", help="layer width (default 1024 on GPU, 256 on CPU)"),
        mode: str = typer.Option("fwd,fwdbwd,decode", "--mode", "--modes", help="any of fwd, fwdbwd, decode"),
        dtype: str = typer.Option("bf16", "--dtype", help="bf16, fp16 or fp32"),
        device: str = typer.Option("auto", "--device", help="auto, cuda or cpu"),
        peers: str = typer.Option("all", "--peers", help="all, none, or comma-separated peer names"),
        model: bool = typer.Option(False, "--model", help="also time a whole ZooLM per mixer"),
        n_layers: int = typer.Option(2, "--n-layers", help="layers of the --model targets"),
        warmup: int = typer.Option(None, "--warmup", help="warm-up calls (default 2 on GPU, 1 on CPU)"),
        reps: int = typer.Option(None, "--reps", help="timed calls at most (default 20 on GPU, 3 on CPU)"),
        point_budget: float = typer.Option(0.5, "--point-budget", help="seconds of timing per point (>= 3 calls)"),
        max_call_s: float = typer.Option(10.0, "--max-call-s",
                                         help="skip longer lengths predicted slower than this per call"),
        budget_s: float = typer.Option(None, "--budget-s",
                                       help="wall-clock budget: each mixer and its peers get a share; "
                                            "points past it are rows marked skipped"),
        fill_chunk: str = typer.Option("8k", "--fill-chunk", help="tokens per chunk when filling decode caches"),
        json_out: Path = typer.Option(None, "--json", help="also write every row and the ceilings to this file"),
        root: Path = typer.Option(None, "--root", help="results store root (default $ZOO_ROOT or ./zoo-runs)"),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="show the progress bar"),
    ) -> None:
        """Time each mixer layer (and its peer kernels) per sequence length: median time with CUDA
        events, tokens/s, TFLOP/s, peak memory; fwd, fwd+bwd and decode. Rows go to the results
        store (kind "bench", device ceilings as kind "ceiling") and to --json."""
        from pydantic import ValidationError

        from zoo.eval.bench import BenchConfig, parse_size, parse_sizes, peer_names, run_bench, status_counts, tables
        from zoo.store import Store

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
            unknown = [p for p in peer_list if p not in peer_names()]
            if unknown:
                raise ZooError(f"unknown peer(s): {', '.join(unknown)}", f"known: all, none, {', '.join(peer_names())}")
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
