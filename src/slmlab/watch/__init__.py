"""Training-time health ("watch"): observe a run while it trains and act when it goes wrong.

* :mod:`slmlab.watch.events` — the event stream: the loop publishes, observers listen.
* :mod:`slmlab.watch.spectral` — spectral metrics of weights, LoRA deltas and hidden states
  (formulas: ``docs/spectral.md``).
* :mod:`slmlab.watch.health` — health checks: status table, Φ and regimes, generation probes.
* :mod:`slmlab.watch.recovery` — detectors, the health policy, adapter surgery, fault injection.
* :mod:`slmlab.watch.dashboard` — the live view and ``slmlab watch``;
  :mod:`slmlab.watch.run_report` — ``report.html``.

Definitions and defaults: ``docs/watch.md``.
"""
