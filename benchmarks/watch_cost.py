"""Cost of watching: one spectral pass vs WeightWatcher's analyze(), and the monitor's overhead on training.

    .venv/bin/python benchmarks/watch_cost.py              # every nn.Linear vs WeightWatcher
    .venv/bin/python benchmarks/watch_cost.py --layers 8   # first 8 decoder blocks only (7 linears each)
    .venv/bin/python benchmarks/watch_cost.py --overhead   # monitor overhead during LoRA training instead

Overhead mode trains SmolLM2-135M with LoRA (the quickstart's settings: v6-golden, r=32, batch 4×2,
max_length 128) for ``--steps`` steps twice in one process: with the health monitor off, then on at
its default intervals (health check every 25 steps, generation probe every 100, adapter spectra
every 50). It prints both wall times, their ratio, and the time spent inside the monitor as a
share of the monitored run (the less noisy figure; target ≤ 5%).

Both sides analyse the same modules: every ``nn.Linear`` (q/k/v/o, gate/up/down of each block,
plus ``lm_head`` when there is no ``--layers`` limit). WeightWatcher runs with its defaults
(power-law fit with its own 'ww' fitter, no plots), restricted to those modules' layer ids, so
its time excludes the embedding it would also analyse by default. ``weightwatcher`` is a
benchmark-only dependency (``pip install weightwatcher``); without it only our timing is printed.

Prints both wall-clock times, the ratio, and how many layers' alpha agree within 10%.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import os
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="slmlab model spec (default smollm2-135m)")
    ap.add_argument("--layers", type=int, default=None, help="only the first N decoder blocks, on both sides")
    ap.add_argument("--no-ww", action="store_true", help="skip WeightWatcher, time our pass only")
    ap.add_argument("--threads", type=int, default=1, help="torch threads during our pass (default 1)")
    ap.add_argument("--overhead", action="store_true", help="measure the monitor's overhead on training instead")
    ap.add_argument("--steps", type=int, default=100, help="training steps per run in --overhead mode (default 100)")
    args = ap.parse_args(argv)
    if args.overhead:
        return overhead(args.model, args.steps)

    import torch

    from slmlab.models import load
    from slmlab.watch.spectral import model_spectral_report

    t0 = time.perf_counter()
    model, _tok = load(args.model)
    model.eval()
    print(f"loaded {args.model} in {time.perf_counter() - t0:.1f} s; torch threads {torch.get_num_threads()}")

    layers = list(range(args.layers)) if args.layers is not None else None
    t0 = time.perf_counter()
    report = model_spectral_report(model, layers=layers, num_threads=args.threads)
    ours_s = time.perf_counter() - t0
    ours = {r["name"]: r["metrics"]["alpha"] for r in report}
    print(f"slmlab.watch.spectral: {len(report)} linear layers in {ours_s:.2f} s "
          f"({1000 * ours_s / max(len(report), 1):.0f} ms/layer, {args.threads} thread(s))")

    if args.no_ww:
        return 0
    try:
        import weightwatcher as ww
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
        print(f"weightwatcher unavailable ({type(exc).__name__}: {exc}); install with `pip install weightwatcher`."
              " Only our timing is reported.")
        return 0

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            watcher = ww.WeightWatcher(model=model)
            desc = watcher.describe()
        ids = [int(i) for i, name in zip(desc["layer_id"], desc["longname"]) if name in ours]
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            details = watcher.analyze(layers=ids)
        ww_s = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - report and keep our figure
        print(f"weightwatcher could not run ({type(exc).__name__}: {exc}); only our timing is reported.")
        return 0

    theirs = {str(n): float(a) for n, a in zip(details["longname"], details["alpha"])}
    common = [n for n in ours if n in theirs]
    agree = [n for n in common
             if math.isfinite(ours[n]) and theirs[n] > 0 and abs(ours[n] - theirs[n]) <= 0.10 * abs(theirs[n])]
    print(f"weightwatcher {ww.__version__} analyze(): {len(details)} layers in {ww_s:.2f} s "
          f"({1000 * ww_s / max(len(details), 1):.0f} ms/layer)")
    print(f"speed-up: {ww_s / ours_s:.1f}x (weightwatcher time / ours)")
    print(f"alpha agrees within 10% on {len(agree)}/{len(common)} layers "
          f"(max |rel diff| {max((abs(ours[n] - theirs[n]) / abs(theirs[n]) for n in common), default=float('nan')):.2e})")
    for n in [n for n in common if n not in agree][:5]:
        print(f"  differs: {n}: ours {ours[n]:.3f} vs weightwatcher {theirs[n]:.3f}")
    return 0


def overhead(model: str, steps: int) -> int:
    import tempfile

    from slmlab.console import quiet_transformers
    from slmlab.train.config import load_train_config
    from slmlab.train.loop import run

    quiet_transformers()
    base = {"model": model, "seed": 0, "adapter": {"kind": "lora", "r": 32, "alpha": 64},
            "data": {"recipe": "v6-golden", "count": 1200, "max_length": 128},
            "optimizer": {"lr": 2e-4}, "batch_size": 4, "grad_accum": 2, "max_steps": steps, "save_every": None,
            "watch": {"dashboard": False}}
    times, seconds = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        # Warm-up: data generation caches, model cache, allocator — so neither timed run pays for them.
        run(load_train_config(data={**base, "name": "warmup", "output_dir": tmp, "max_steps": 2,
                                    "watch": {"enabled": False, "dashboard": False}}))
        for label, watch in (("monitor off", {"enabled": False}), ("monitor on (defaults)", {})):
            cfg = load_train_config(data={**base, "name": label.split()[1], "output_dir": tmp,
                                          "watch": {**base["watch"], **watch}})
            t0 = time.perf_counter()
            result = run(cfg)
            times[label] = time.perf_counter() - t0
            if watch == {}:
                seconds = result.summary["watch"]["seconds"]
                last = result.summary["watch"]
    off, on = times["monitor off"], times["monitor on (defaults)"]
    print(f"{steps} LoRA steps on {model}: monitor off {off:.1f} s, on {on:.1f} s -> ratio {on / off:.3f} "
          f"(+{100 * (on - off) / off:.1f}% wall clock, noisy)")
    print(f"time inside the monitor: {seconds:.1f} s = {100 * seconds / on:.1f}% of the monitored run "
          f"(target <= 5%); last status {last['last_status']}, regime {last['last_regime']}, phi {last['last_phi']:.3f}, "
          f"loop rate {last['last_loop_rate']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
