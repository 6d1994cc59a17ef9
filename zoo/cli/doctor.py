"""`zoo doctor`: what this machine can run, which backend each mixer would use, and the
plugins of every kind that failed to load."""

from __future__ import annotations

import torch
import typer
from rich.markup import escape
from rich.table import Table

from zoo import env, plugins, registry


def register(app: typer.Typer) -> None:
    from zoo.cli import console
    from zoo.cli.plugins import broken_table

    @app.command("doctor")
    def doctor() -> None:
        """Versions of torch, CUDA, triton and the optional kernels; the backend per mixer."""
        v = env.versions()
        cuda = torch.cuda.is_available()
        device = torch.device("cuda" if cuda else "cpu")
        t = Table(title="environment")
        t.add_column("component")
        t.add_column("status")
        t.add_row("python", v["python"])
        t.add_row("torch", v["torch"])
        t.add_row("CUDA", f"{v['cuda']} (available)" if cuda else f"{v['cuda'] or 'none'} (no GPU visible)")
        t.add_row("device", env.device_name(device) + (f", capability {env.cuda_capability(device)}" if cuda else ""))
        for mod, dist in env.OPTIONAL.items():
            ver = v[mod]
            t.add_row(dist, f"[green]{ver}[/]" if ver else "[dim]not installed[/]")
        console.print(t)
        mt = Table(title=f"backend each mixer uses on {device}")
        for col in ("mixer", "backend", "unavailable here"):
            mt.add_column(col)
        for spec in registry.specs():
            choice = spec.choose_backend(device)
            mt.add_row(spec.name, choice.chosen, escape("; ".join(f"{b}: {r}" for b, r in choice.reasons.items())))
        console.print(mt)
        broken_table(*(plugins.registry(kind) for kind in plugins.REGISTRIES))
