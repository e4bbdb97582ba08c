"""Start each DPO training step above the layers LoRA leaves frozen, from their output read once.

With adapters only in the top layers (``lora_layers``), the layers below them never change during training, so
their output for a given token sequence is the same in the reference precompute and in every training step. The
precompute reads every pair once anyway; this keeps what the highest frozen layer returned for each sequence, and
in training the frozen layers hand that back instead of recomputing it. Gradients are unchanged: nothing below
the adapters has any. On 2 CPU cores with the outcome recipe (15 of 30 layers adapted) a step takes a quarter less
time (benchmarks/bench_frozen_layers.py); the cache holds ``hidden_size`` floats per token of the pairs in CPU
memory (about 330 MB for the recipe's 709), moved to the model's device one batch at a time.

A forward pass uses the cache only when every sequence in the batch was recorded and is right-padded (TRL's DPO
collator); anything else (the retain loss's prompts, a gate read, generation) runs the layers as usual.

Used by ``alignment.train.train`` when ``cache_frozen_layers`` is set; not run on its own.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

_LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


def decoder_stack(model: Any) -> Any | None:
    """The module holding the decoder layers (``.layers``) of a causal LM, peft-wrapped or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "model", None)
    return decoder if hasattr(decoder, "layers") else None


def first_adapted_layer(model: Any, peft_config: Any = None) -> int | None:
    """The lowest decoder layer with a LoRA adapter: from ``peft_config.layers_to_transform`` before peft wraps
    the model, else from the adapter modules already in it. None when every layer is adapted or none is known."""
    layers = getattr(peft_config, "layers_to_transform", None) if peft_config is not None else None
    if layers:
        return min(layers) if isinstance(layers, (list, tuple)) else int(layers)
    if peft_config is not None:
        return None  # adapters in every layer: nothing below them is frozen
    found = [int(m.group(1)) for name, _ in model.named_modules() if "lora_A" in name
             for m in [_LAYER_INDEX.search(name)] if m]
    return min(found) if found else None


def _has_dropout(modules: Any, config: Any) -> bool:
    import torch

    if getattr(config, "attention_dropout", 0.0) or getattr(config, "hidden_dropout", 0.0):
        return True
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 for layer in modules for m in layer.modules())


class FrozenLayerCache:
    """The output of decoder layers ``0 .. depth - 1`` for each recorded token sequence."""

    def __init__(self, decoder: Any, depth: int) -> None:
        self.decoder = decoder
        self.depth = depth
        self.states: dict[tuple[int, ...], Any] = {}
        self._batch: tuple[Any, Any] | None = None  # (input_ids, attention_mask) of the forward pass in progress
        self._ready: Any = None  # the cached output for the forward pass in progress, when all of it was recorded
        self.hits = 0
        self.misses = 0

    @classmethod
    def for_model(cls, model: Any, peft_config: Any = None) -> FrozenLayerCache | None:
        """A cache for ``model``, or None where none applies: no decoder stack found, adapters in every layer, or
        dropout in the frozen layers (their output would then differ between the precompute and training)."""
        decoder = decoder_stack(model)
        depth = first_adapted_layer(model, peft_config)
        if decoder is None or not depth or depth > len(decoder.layers):
            return None
        if _has_dropout(decoder.layers[:depth], getattr(decoder, "config", None)):
            return None
        return cls(decoder, depth)

    def summary(self) -> dict[str, int]:
        """Layers skipped, sequences recorded, forward passes served from the cache and run in full."""
        return {"layers": self.depth, "sequences": len(self.states), "cached_passes": self.hits,
                "full_passes": self.misses}

    @staticmethod
    def _rows(input_ids: Any, attention_mask: Any) -> list[tuple[tuple[int, ...], int]] | None:
        """Each row's key (its tokens) and length; None unless every row is right-padded."""
        rows = []
        for r in range(input_ids.shape[0]):
            length = int(attention_mask[r].sum()) if attention_mask is not None else input_ids.shape[1]
            if attention_mask is not None and not bool(attention_mask[r, :length].all()):
                return None  # left padding or holes: positions would not line up
            rows.append((tuple(input_ids[r, :length].tolist()), length))
        return rows

    def _see_batch(self, module: Any, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        self._batch = (input_ids, kwargs.get("attention_mask")) if input_ids is not None else None

    @contextlib.contextmanager
    def recording(self) -> Iterator[FrozenLayerCache]:
        """Keep the highest frozen layer's output for every sequence read inside the block (the precompute)."""

        def keep(module: Any, args: tuple, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            if self._batch is None:
                return
            rows = self._rows(*self._batch)
            for r, (key, length) in enumerate(rows or []):
                self.states[key] = hidden[r, :length].detach().to("cpu", copy=True)  # in RAM, not GPU memory

        handles = [self.decoder.register_forward_pre_hook(self._see_batch, with_kwargs=True),
                   self.decoder.layers[self.depth - 1].register_forward_hook(keep)]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self._batch = None

    def _prepare(self, module: Any, args: tuple, kwargs: dict) -> None:
        import torch

        self._see_batch(module, args, kwargs)
        self._ready = None
        rows = self._rows(*self._batch) if self._batch is not None else None
        if not rows or any(key not in self.states for key, _ in rows):
            self.misses += 1
            return
        first = self.states[rows[0][0]]
        ready = torch.zeros(len(rows), self._batch[0].shape[1], first.shape[-1], dtype=first.dtype)
        for r, (key, length) in enumerate(rows):
            ready[r, :length] = self.states[key]
        self._ready = ready.to(self._batch[0].device)
        self.hits += 1

    def _frozen_forward(self, index: int, original: Any) -> Any:
        def forward(hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
            if self._ready is None:
                return original(hidden_states, *args, **kwargs)
            if index < self.depth - 1:
                return hidden_states  # skipped: the last frozen layer returns what they would have led to
            ready, self._ready = self._ready, None
            return ready.to(device=hidden_states.device, dtype=hidden_states.dtype)

        return forward

    @contextlib.contextmanager
    def serving(self) -> Iterator[FrozenLayerCache]:
        """Inside the block, a forward pass whose every sequence was recorded starts above the frozen layers."""
        if not self.states:
            yield self
            return
        layers = self.decoder.layers[:self.depth]
        for index, layer in enumerate(layers):
            layer.forward = self._frozen_forward(index, layer.forward)
        handle = self.decoder.register_forward_pre_hook(self._prepare, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()
            for layer in layers:
                del layer.forward  # back to the class's own forward
            self._ready = self._batch = None
