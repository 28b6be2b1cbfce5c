"""``slmlab kernel constellation`` (init a constellation model) and ``slmlab kernel routing`` (its load balance).

Command functions only; ``slmlab.kernel.cli`` registers them on ``kernel_app``:

    from slmlab.kernel.constellation_cli import constellation_cmd, routing_cmd
    kernel_app.command("constellation")(constellation_cmd)
    kernel_app.command("routing")(routing_cmd)

Heavy imports happen inside the commands; user errors raise :class:`slmlab.errors.SlmlabError`.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from slmlab.console import Table, console, print_table, quiet_transformers
from slmlab.errors import SlmlabError
from slmlab.outputs import OVERWRITE_HELP


def constellation_cmd(
    depth: int = typer.Option(..., "--depth", help="The kernel family's size knob: layers = depth, hidden = 48·depth."),
    experts: int = typer.Option(8, "--experts", help="Experts per layer (K). With --prototypes simple at most 8."),
    router: str = typer.Option("e8", "--router", help="e8 (nearest E8 prototypes by Fisher-Rao, no learned gate), "
                               "learned (linear gate, top-k, balance loss) or dense (one MLP K times wider)."),
    tokenizer: Path = typer.Option(..., "--tokenizer", help="Tokenizer directory (from `slmlab kernel tokenizer`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output model directory."),
    seed: int = typer.Option(0, "--seed", help="Seed of the weights and of the routers' fixed projections."),
    experts_per_token: int = typer.Option(2, "--experts-per-token", help="Experts each token is sent to (top-k)."),
    expert_intermediate: int | None = typer.Option(None, "--expert-intermediate", help="Width of each expert's SwiGLU "
                                                   "(default: the family's MLP width, 128·depth)."),
    prototypes: str = typer.Option("simple", "--prototypes", help="E8 positions of the experts: simple (the 8 simple "
                                   "roots) or roots (the first K of the 240 roots)."),
    context: int = typer.Option(2048, "--context", help="Longest sequence (RoPE positions) the model is configured for."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Initialise a constellation: a kernel whose MLPs are K experts routed per token (docs/kernel.md, Constellation).

    The directory is an ordinary model directory (model_type slmlab_constellation): `slmlab train` with
    adapter.kind full, `slmlab kernel bpb` and the other commands take it.

    Example: [bold]slmlab kernel constellation --depth 2 --experts 8 --router e8 --tokenizer kernels/tok-2k -o kernels/c2-e8[/bold]
    """
    from slmlab.kernel.constellation import init_constellation

    quiet_transformers()
    r = init_constellation(depth, experts, router, tokenizer, out, seed=seed, experts_per_token=experts_per_token,
                           expert_intermediate=expert_intermediate, prototypes=prototypes, context=context,
                           overwrite=overwrite)
    c = r.config
    routing = "no routing" if c.router == "dense" else f"{c.experts_per_token} of {c.n_experts} experts per token"
    console.print(f"wrote {r.out_dir}: depth {depth}, router {c.router} ({routing}), experts {c.n_experts} × "
                  f"{c.expert_intermediate} wide, {r.params / 1e6:.2f}M parameters (seed {r.seed})",
                  highlight=False, markup=False)


def routing_cmd(
    model: str = typer.Argument(..., help="A constellation model directory (e.g. runs/NAME/model)."),
    data: Path | None = typer.Option(None, "--data", help="Measure on these texts (.jsonl of {\"text\"} or a text "
                                     "file) instead of reading the counts recorded during training."),
    limit: int = typer.Option(200, "--limit", help="With --data: the first N texts."),
    max_length: int = typer.Option(256, "--max-length", help="With --data: tokens per text (longer texts are cut)."),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON."),
) -> None:
    """Load balance (per-expert token shares, entropy, max/min) and κ of a constellation's routing.

    Without --data: the counts recorded while it trained (saved with the model).

    Example: [bold]slmlab kernel routing runs/c2-e8/model --data data/kernel/val.jsonl[/bold]
    """
    from slmlab.kernel.bpb import read_eval_texts
    from slmlab.kernel.constellation import held_out_routing, routing_stats
    from slmlab.models import load

    quiet_transformers()
    if limit < 1 or max_length < 2:
        raise SlmlabError(f"--limit must be positive and --max-length at least 2, got {limit} and {max_length}")
    m, tok = load(model)
    if getattr(m.config, "model_type", None) != "slmlab_constellation":
        raise SlmlabError(f"{model} is not a constellation model (model_type {m.config.model_type!r})")
    if data is None:
        stats = routing_stats(m)
    else:
        texts = read_eval_texts(data, limit)
        ids = [x[:max_length] for x in tok(texts, add_special_tokens=False)["input_ids"]]
        stats = held_out_routing(m, ids)
    if as_json:
        typer.echo(json.dumps(stats))
        return
    print_routing(stats)


def print_routing(stats: dict) -> None:
    """One row per layer and one for all layers: shares, entropy / ln K, max, min; then κ."""
    if not stats["layers"]:
        console.print(f"router {stats['router']}: no routing to report", highlight=False, markup=False)
        return
    table = Table(title=f"routing ({stats['router']}, {stats['experts_per_token']} of {stats['n_experts']} per token)")
    for name in ("layer", "token-slots", "shares", "entropy/ln K", "max", "min"):
        table.add_column(name)
    rows = [(str(i), s) for i, s in enumerate(stats["layers"])] + [("all", stats["overall"])]
    for name, s in rows:
        table.add_row(name, str(s["slots"]), " ".join(f"{x:.3f}" for x in s["shares"]), f"{s['entropy_norm']:.3f}",
                      f"{s['max_share']:.3f}", f"{s['min_share']:.3f}")
    print_table(table)
    kappa = stats["kappa"]
    console.print(f"κ (adjacent-layer routing NMI): {'n/a' if kappa is None else f'{kappa:.3f}'}", highlight=False,
                  markup=False)


__all__ = ["constellation_cmd", "print_routing", "routing_cmd"]
