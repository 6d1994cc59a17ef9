"""`zoo mixers`, `zoo mixers show NAME`, `zoo check NAME`."""

from __future__ import annotations

import torch
import typer
from rich.markup import escape
from rich.table import Table

from zoo import registry
from zoo.cli.plugins import conformance_table
from zoo.mixer import no_decay_names
from zoo.report import fmt

REF_D_MODEL = 1024


def reference_mixer(spec: registry.MixerSpec, d_model: int = REF_D_MODEL):
    """The mixer at the reference width with its default config, without allocating weights."""
    from zoo.model import build_on_meta

    cfg = spec.make_config()
    return build_on_meta(lambda: spec.cls(d_model, cfg))


def register(app: typer.Typer) -> None:
    from zoo.cli import console
    from zoo.cli.plugins import broken_table

    mixers_app = typer.Typer(help="List and inspect the registered mixers.", invoke_without_command=True)
    app.add_typer(mixers_app, name="mixers")

    @mixers_app.callback()
    def mixers_list(ctx: typer.Context) -> None:
        """Every registered mixer, built-in and plugin, with its costs and backends here."""
        if ctx.invoked_subcommand is not None:
            return
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        t = Table(title=f"mixers (parameters and state at d_model={REF_D_MODEL}, bf16, batch 1; backends on {device})")
        for col in ("name", "family", "params", "cost", "state 8K", "state 1M", "max length", "backend here", "source"):
            t.add_column(col, no_wrap=col in ("name", "params"))
        for spec in registry.specs():
            m = reference_mixer(spec)
            choice = spec.choose_backend(device)
            unavailable = ", ".join(f"{b}: {r}" for b, r in choice.reasons.items())
            t.add_row(
                escape(spec.name), escape(spec.family), fmt.count(sum(p.numel() for p in m.parameters())),
                spec.capabilities.cost, fmt.nbytes(m.state_bytes(8192)), fmt.nbytes(m.state_bytes(2**20)),
                "unbounded" if m.max_length is None else str(m.max_length),
                choice.chosen + (f" [dim](no {escape(unavailable)})[/]" if unavailable else ""), escape(spec.source),
            )
        console.print(t)
        broken_table(registry.MIXERS)

    @mixers_app.command("show")
    def mixers_show(name: str = typer.Argument(..., help="registry name")) -> None:
        """Config fields with defaults and bounds, docs, citation, backends, the parameters without weight decay
        and the implementation version of one mixer."""
        spec = registry.get_spec(name)
        console.print(f"[bold]{escape(spec.name)}[/]  ({escape(spec.family)}, from {escape(spec.source)})")
        console.print(spec.description, markup=False)
        console.print(f"[dim]cite:[/] {escape(spec.citation)}")
        caps = spec.capabilities
        console.print(f"cost {caps.cost}, {caps.state} state, "
                      f"max length {caps.max_length or 'unbounded'}")
        doc = (spec.cls.__doc__ or "").strip()
        if doc:
            console.print(f"\n{doc}\n", markup=False)
        t = Table(title="config")
        for col in ("field", "type", "default", "bounds", "description"):
            t.add_column(col)
        for fname, f in spec.config_cls.model_fields.items():
            bounds = []
            for m in f.metadata:
                for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
                    if getattr(m, attr, None) is not None:
                        bounds.append(f"{sym} {getattr(m, attr)}")
            ann = getattr(f.annotation, "__name__", None) or str(f.annotation).replace("typing.", "")
            t.add_row(fname, escape(ann), escape(repr(f.default)), ", ".join(bounds), escape(f.description or ""))
        console.print(t)
        bt = Table(title="backends (in order of preference)")
        for col in ("backend", "what", "on cpu", "on cuda"):
            bt.add_column(col)
        for b in spec.backends:
            bt.add_row(b.name, escape(b.description), escape(b.check(torch.device("cpu")) or "yes"),
                       escape(b.check(torch.device("cuda")) or "yes"))
        console.print(bt)
        try:
            m = reference_mixer(spec)
        except Exception as e:  # a plugin whose default config cannot be built at this width
            console.print(f"no weight decay on: [dim]unknown ({type(e).__name__}: {e})[/]")
        else:
            exempt = no_decay_names(m)
            console.print(f"no weight decay on ({len(exempt)} of {len(list(m.parameters()))} parameters, "
                          f"d_model={REF_D_MODEL}): {', '.join(exempt) or 'none'}")
        console.print(f"implementation version {spec.version}")

    @app.command("check")
    def check(name: str = typer.Argument(..., help="registry name of the mixer to test")) -> None:
        """Run the conformance suite on one mixer (tiny sizes, CPU)."""
        from zoo import conformance

        spec = registry.get_spec(name)
        conformance_table(f"mixer '{name}'", conformance.run_all(spec))
