"""The experimental basin-aware penalty as a step hook: ``capture()`` around the forward, then ``penalty(batch)``.

It reads ``hidden_states[layer]`` through a forward hook (the decoder's own forward is not
changed) and hands it to :func:`slmlab.experimental.basin_loss.basin_penalty`. Off by default;
importing the experimental module warns.
"""

from __future__ import annotations

from slmlab.train.data import TrainingError


class BasinPenalty:
    def __init__(self, model, cfg):
        from slmlab.experimental.basin_loss import basin_penalty  # warns: it is experimental

        self.fn, self.cfg = basin_penalty, cfg
        core = model.get_base_model() if hasattr(model, "get_base_model") else model
        decoder = core.get_decoder()
        n = len(decoder.layers)
        idx = cfg.layer if cfg.layer >= 0 else n + 1 + cfg.layer
        if not 0 <= idx <= n:
            raise TrainingError(f"experimental.basin_loss.layer: {cfg.layer} is out of range for {n} layers (-{n + 1}..{n})")
        # hidden_states[0] = embeddings, [k] = output of layer k-1, [n] = after the final norm.
        self.module = decoder if idx == n else (decoder.embed_tokens if idx == 0 else decoder.layers[idx - 1])
        self.hidden = None

    def capture(self) -> _Capture:
        """A context during which the hooked module's output is kept (the hook is always removed)."""
        return _Capture(self)

    def penalty(self, batch: dict):
        mask = batch["example_ids"] >= 0 if "example_ids" in batch else None
        value, _ = self.fn(self.hidden, mask, self.cfg)
        self.hidden = None
        return value


class _Capture:
    def __init__(self, owner: BasinPenalty):
        self.owner, self.handle = owner, None

    def _hook(self, _module, _args, output) -> None:
        self.owner.hidden = output[0] if isinstance(output, tuple) else getattr(output, "last_hidden_state", output)

    def __enter__(self) -> _Capture:
        self.handle = self.owner.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> bool:
        self.handle.remove()
        return False
