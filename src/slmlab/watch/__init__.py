"""Training-time health monitoring ("watch"): cheap diagnostics of a model while it trains.

* :mod:`slmlab.watch.spectral` — spectral health metrics of weight matrices, LoRA deltas and
  hidden-state covariances (entropy, effective/stable rank, eigengap, WeightWatcher-style
  power-law exponent alpha). Formulas and normalisations: ``docs/spectral.md``.
"""
