"""Retain loss: keep a LoRA model's hidden states on benign prompts where the base model has them.

DPO + SFT teaches refusals as a near word-level rule on the bundled model, while a linear probe on the base
model's own hidden states tells the same prompts apart far better (docs/OUTCOME.md, "linear probes"). The retain
loss of circuit-breaker training (Zou et al., 2024) is one way to make the adapter act only where harmful prompts
differ: at every step it also reads a batch of benign *retain* prompts twice, with the adapter and without it
(the base model), and adds the per-token drift of the adapted layers' hidden states,
``|h_adapted - h_base|² / |h_base|²`` averaged over prompt tokens and layers, weighted by ``retain_weight``.
Per-token relative drift keeps the few huge-norm positions (the first token) from dominating the average;
``retain_last_tokens`` narrows it to the last prompt tokens, where the answer's first token is read from.

Used by alignment.train when TrainConfig.retain_weight > 0; measure an adapter's drift on a prompt file:
    python -m alignment.retain --adapter runs/refusal-bundled-cpu/adapter --prompts PAIRS.jsonl [--label benign]
        [--last-tokens 4]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

Messages = list[dict[str, str]]


class RetainDataError(ValueError):
    """The retain prompt file is missing, empty or malformed; the message says which."""


def read_retain_prompts(path: str | Path, label: str | None = None) -> list[Messages]:
    """Prompts of a .jsonl or .parquet file as chat messages: rows with ``prompt`` (text or messages) and ``label``.

    Preference pairs work as they are (their prompt is the retain prompt); ``label`` keeps only rows whose
    ``label`` field equals it (the outcome pipeline's pairs say "benign" or "harmful").
    """
    from alignment.train import DatasetError, read_rows

    try:
        rows = read_rows(str(path))
    except DatasetError as exc:
        raise RetainDataError(f"Retain prompts: {exc}") from exc
    prompts: list[Messages] = []
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or "prompt" not in row:
            raise RetainDataError(f"{path} row {number} has no 'prompt' field.")
        if label is not None and row.get("label") != label:
            continue
        prompt = row["prompt"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if not (isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "content" in m for m in prompt)):
            raise RetainDataError(f"{path} row {number}: 'prompt' must be text or a list of chat messages.")
        prompts.append(prompt)
    if not prompts:
        which = f" with label {label!r}" if label is not None else ""
        raise RetainDataError(f"{path} has no prompts{which}; the retain loss needs at least one.")
    return prompts


def encode_prompts(tokenizer: Any, prompts: Sequence[Messages], max_length: int | None = None) -> list[list[int]]:
    """Token ids of each prompt through the chat template, up to where the answer starts (the decision point)."""
    from alignment.generation import format_chat

    encoded = []
    for messages in prompts:
        ids = tokenizer(format_chat(tokenizer, messages), add_special_tokens=False)["input_ids"]
        # Keep the end: the last positions are the ones the first answer token is read from.
        encoded.append(ids[-max_length:] if max_length else ids)
    return encoded


def pad_batch(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and the attention mask (1 on real tokens)."""
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = 1
    return input_ids, mask


class RetainBatches:
    """An endless, seeded stream of batches over the encoded prompts: each epoch visits every prompt once."""

    def __init__(self, encoded: Sequence[list[int]], batch_size: int, seed: int = 0) -> None:
        if not encoded:
            raise RetainDataError("The retain loss needs at least one prompt.")
        self.encoded = list(encoded)
        self.batch_size = max(1, batch_size)
        self._random = random.Random(seed)
        self._order: list[int] = []

    def __iter__(self) -> Iterator[list[list[int]]]:
        return self

    def __next__(self) -> list[list[int]]:
        batch = []
        while len(batch) < self.batch_size:
            if not self._order:
                self._order = list(range(len(self.encoded)))
                self._random.shuffle(self._order)
            batch.append(self.encoded[self._order.pop()])
        return batch


def relative_drift(adapted: Sequence[torch.Tensor], base: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Mean over layers and real tokens of |adapted - base|² / |base|² (each tensor: batch × tokens × hidden)."""
    weights = mask.to(adapted[0].dtype)
    per_layer = []
    for a, b in zip(adapted, base, strict=True):
        b = b.to(a.dtype)
        drift = (a - b).pow(2).sum(-1) / b.pow(2).sum(-1).clamp_min(1e-6)
        per_layer.append((drift * weights).sum() / weights.sum().clamp_min(1))
    return torch.stack(per_layer).mean()


def _decoder(model: Any) -> Any:
    """The transformer stack without the LM head (the head's vocabulary-wide logits are not needed here)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder() if hasattr(base, "get_decoder") else base


def adapted_layer_range(model: Any) -> tuple[int, int]:
    """Hidden-state indices (1-based layer outputs) from the lowest adapted layer to the last layer."""
    num_layers = model.config.num_hidden_layers if hasattr(model, "config") else 0
    lowest = num_layers
    for name, _ in model.named_parameters():
        if "lora_" in name and ".layers." in name:
            lowest = min(lowest, int(name.split(".layers.")[1].split(".")[0]))
    return lowest + 1, num_layers


def last_tokens_mask(attention_mask: torch.Tensor, count: int) -> torch.Tensor:
    """The right-padded mask narrowed to each row's last ``count`` real tokens (0 keeps every real token)."""
    if count <= 0:
        return attention_mask
    lengths = attention_mask.sum(dim=1, keepdim=True)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device).unsqueeze(0)
    return (attention_mask.bool() & (positions >= lengths - count)).to(attention_mask.dtype)


def retain_drift(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 last_tokens: int = 0) -> torch.Tensor:
    """The drift of the adapted layers' hidden states from the base model's (gradients flow to the adapter), over
    every prompt token or only the last ``last_tokens`` (where the answer's first token is read from)."""
    decoder = _decoder(model)
    first, last = adapted_layer_range(model)
    if first > last:
        return torch.zeros((), device=input_ids.device)
    with torch.no_grad(), model.disable_adapter():
        base = decoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)
    adapted = decoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)
    layers = range(first, last + 1)
    return relative_drift([adapted.hidden_states[i] for i in layers], [base.hidden_states[i] for i in layers],
                          last_tokens_mask(attention_mask, last_tokens))


def retain_trainer_class(trainer_class: type) -> type:
    """``trainer_class`` (trl.DPOTrainer) with the retain loss added to every training step's loss."""

    class RetainDPOTrainer(trainer_class):
        def __init__(self, *args: Any, retain_batches: RetainBatches, retain_weight: float, retain_last_tokens: int = 0,
                     **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.retain_batches = retain_batches
            self.retain_weight = retain_weight
            self.retain_last_tokens = retain_last_tokens

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
            if not model.training:
                return result
            unwrapped = self.accelerator.unwrap_model(model)
            pad_id = self.processing_class.pad_token_id
            input_ids, mask = pad_batch(next(self.retain_batches), 0 if pad_id is None else pad_id)
            device = next(unwrapped.parameters()).device
            drift = retain_drift(unwrapped, input_ids.to(device), mask.to(device), self.retain_last_tokens)
            self._metrics["train"]["retain_drift"].append(drift.detach().float().item())
            extra = self.retain_weight * drift
            if return_outputs:
                loss, outputs = result
                return loss + extra, outputs
            return result + extra

    return RetainDPOTrainer


def measure(adapter: str, prompts_path: str, label: str | None, model_name: str = "bundled",
            batch_size: int = 8, last_tokens: int = 0) -> dict[str, float]:
    """Mean drift of ``adapter`` from the base on the prompts of ``prompts_path`` (no gradients)."""
    from alignment.evaluate import attach_adapter
    from alignment.models import LoadSettings, load_model

    prompts = read_retain_prompts(prompts_path, label)  # a bad file fails before the model loads
    loaded = load_model(LoadSettings(model=model_name, device="cpu"))
    attach_adapter(loaded, Path(adapter))
    model = loaded.model
    model.eval()
    encoded = encode_prompts(loaded.tokenizer, prompts)
    pad_id = loaded.tokenizer.pad_token_id or 0
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            batch = encoded[start : start + batch_size]
            input_ids, mask = pad_batch(batch, pad_id)
            total += retain_drift(model, input_ids, mask, last_tokens).item() * len(batch)
            count += len(batch)
    return {"prompts": count, "mean_drift": total / count}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alignment.retain", description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", required=True, help="LoRA adapter folder.")
    parser.add_argument("--prompts", required=True, help=".jsonl with a 'prompt' per row (pairs work).")
    parser.add_argument("--label", default=None, help="Only rows whose 'label' field equals this (e.g. benign).")
    parser.add_argument("--model", default="bundled", help="Base model the adapter was trained on.")
    parser.add_argument("--last-tokens", type=int, default=0,
                        help="Measure only each prompt's last N tokens (0 = every token).")
    args = parser.parse_args(argv)
    if args.last_tokens < 0:
        print("error: --last-tokens must be 0 (every token) or more.", file=sys.stderr)
        return 2
    from alignment.evaluate import EvaluationError
    from alignment.models import ModelLoadError

    try:
        result = measure(args.adapter, args.prompts, args.label, args.model, last_tokens=args.last_tokens)
    except (RetainDataError, EvaluationError, ModelLoadError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
