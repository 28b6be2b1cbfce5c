"""``slmlab dream``: a thin skin over :func:`slmlab.dream.run` and :func:`slmlab.dream.resume`."""

from __future__ import annotations

from pathlib import Path

import typer

from slmlab.console import console, quiet_transformers
from slmlab.errors import SlmlabError


def dream_cmd(
    config: Path | None = typer.Argument(None, help="Dream config YAML (not needed with --resume)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set rounds=3 (repeatable)."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue the dream run in this directory from its "
                                       "last finished round."),
    rounds: int | None = typer.Option(None, "--rounds", min=1, help="With --resume: the new total number of rounds."),
    server: str | None = typer.Option(None, "--server", help="Sample, train and evaluate through a running "
                                      "`slmlab serve` at this URL (sets server.url)."),
    api_key_file: Path | None = typer.Option(None, "--api-key-file", help="With --server: the file holding its API key."),
) -> None:
    """Dream rounds: sample verifiable puzzles at temperature T, keep verified right answers as chosen and
    the model's wrong ones as rejected, train ORPO/DPO on them, evaluate on held-out puzzles; T follows
    the failure rate.

    Writes RUN_DIR/rounds.jsonl (one line per round), report.html and rounds.svg; resumable.

    Example: [bold]slmlab dream examples/dream/logic.yaml --set rounds=2[/bold]

    Continue a killed run: [bold]slmlab dream --resume runs/dream-logic[/bold]
    """
    from slmlab.dream.config import load_dream_config
    from slmlab.dream.loop import resume as resume_run
    from slmlab.dream.loop import run

    quiet_transformers()

    def show(record: dict) -> None:
        h = record["heldout"]
        lo, hi = h["ci95"]
        head = (f"round {record['round']}: T {record['temperature']:.3g}, failure rate {record['failure_rate']:.0%}, "
                f"{record['pairs']} pairs, {record['steps']} steps"
                + (f", loss {record['loss']:.3f}" if record.get("loss") is not None else "")
                if record["round"] > 0 else "round 0 (starting model)")
        console.print(f"{head}; held-out {h['correct']}/{h['n']} = {h['accuracy']:.0%} (95% CI {lo:.0%}–{hi:.0%})",
                      highlight=False)

    if resume is not None:
        if config is not None or set_ or server is not None:
            raise SlmlabError("--resume continues a run with its saved config: give no CONFIG, --set or --server "
                              "(only --rounds)")
        result = resume_run(resume, rounds=rounds, on_round=show)
    elif config is None:
        raise SlmlabError("give a config file, or --resume RUN_DIR")
    else:
        if rounds is not None:
            raise SlmlabError("--rounds goes with --resume; for a new run use --set rounds=N")
        overrides = list(set_)
        if server is not None:
            overrides.append(f"server.url={server}")
        if api_key_file is not None:
            overrides.append(f"server.api_key_file={api_key_file}")
        result = run(load_dream_config(config, overrides), on_round=show)
    acc = " → ".join(f"{a:.0%}" for a in result.accuracy)
    console.print(f"{result.status}: {len(result.rounds) - 1} rounds, held-out accuracy {acc}; "
                  f"rounds {result.run_dir / 'rounds.jsonl'}; report {result.report}", highlight=False)
