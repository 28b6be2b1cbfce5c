"""``slmlab serve``: a thin skin over :func:`slmlab.serve.build_config` and :func:`slmlab.serve.run`."""

from __future__ import annotations

from pathlib import Path

import typer

from slmlab.console import err_console


def serve_cmd(
    model: str = typer.Option("smollm2-135m", "--model", help="Model spec: smollm2-135m, tiny-random, or a path."),
    adapter: list[str] = typer.Option([], "--adapter", help="NAME=RUN_DIR_OR_ADAPTER_DIR to serve (repeatable)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, "--port", help="Port to listen on (0: any free port)."),
    api_key_file: Path | None = typer.Option(None, "--api-key-file",
                                             help="A file holding the key for /train, /checkpoint and adapter "
                                                  "load/unload; without it those endpoints are disabled."),
    state_dir: Path | None = typer.Option(None, "--state-dir", help="Online-training state and checkpoints live here."),
    allow_dir: list[Path] = typer.Option([], "--allow-dir", help="Adapter load and sync targets must be under "
                                                                 "one of these (repeatable; the state dir is allowed)."),
    train_full: bool = typer.Option(False, "--train-full", help="/train updates the base model's weights "
                                                                "instead of a LoRA per name."),
    readout: Path | None = typer.Option(None, "--readout", help="Concept vectors (a slmlab steer extract dir): "
                                                                "requests with readout: true get per-token scores."),
    config: Path | None = typer.Option(None, "--config", help="A YAML file of server settings (flags override it)."),
    set_: list[str] = typer.Option([], "--set", help="Override one setting: KEY=VALUE, e.g. training.lr=1e-4."),
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API that also trains online.

    Routes: /v1/models, /v1/completions, /v1/chat/completions (streaming), /score, /tokenize,
    /detokenize, /health, /metrics; with a key: /train, /train/status, /checkpoint,
    /v1/load_lora_adapter, /v1/unload_lora_adapter.

    Example: [bold]slmlab serve --model smollm2-135m --adapter mine=runs/quickstart --api-key-file key.txt --state-dir serve-state[/bold]
    """
    from slmlab.serve import build_config, run

    flags = {"model": model, "host": host, "port": port, "state_dir": state_dir, "allowed_dirs": allow_dir,
             "adapters": _pairs(adapter), "train_full": train_full, "api_key_file": api_key_file,
             "readout": readout}
    settings = build_config(config, flags, set_)
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(f"[yellow]warning:[/yellow] binding {settings.host}: the server is reachable from other "
                          "machines. Keep --api-key-file set and put it behind TLS.")
    run(settings)


def _pairs(items: list[str]) -> dict[str, str]:
    from slmlab.errors import SlmlabError

    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SlmlabError(f"--adapter {item!r}: expected NAME=PATH (a run directory or a PEFT adapter directory)")
        out[name] = path
    return out
