"""Memory planner for a DPO run: will it fit, and if not, what to change.

``estimate(model_or_config, train_config, budget_bytes)`` adds up weights, LoRA parameters, gradients, AdamW
state, saved activations (with and without gradient checkpointing), the log-prob projection, the reference
forward and the retain loss's batch, and returns a :class:`MemoryPlan`. When the total exceeds the budget, the
plan carries a concrete suggestion found by searching smaller max_length / batch size, gradient checkpointing
and 4-bit weights.

How TRL 1.16 spends memory (read from trl/trainer/dpo_trainer.py):
- chosen and rejected are concatenated into one batch of 2 × batch size sequences for a single forward;
- with a peft model and no ref_model, the reference is the same weights with the adapter disabled, run under
  no_grad after the policy forward, so it costs a transient, not a second copy of the weights; reference
  log-probs are precomputed (before training, one forward over the data) only with precompute_reference;
- full fine-tuning (lora_r 0) loads a second model as the reference;
- log-probs come from a fused LM head that projects one tile (4096 tokens × 32768 vocabulary columns) at a time,
  so the (tokens × vocab) logits never exist whole;
- on CUDA the reference forward, the log-prob head's backward and a checkpointed layer's recomputation happen at
  different moments and the caching allocator reuses one block for them: only the largest counts.

Constants were calibrated on CPU against measured peak RSS (benchmarks/bench_memory.py) and on a GPU against the
allocator's peak (benchmarks/bench_gpu_memory.py); both in docs/TRAINING.md.
Try it: ``python -m alignment.memory --config recipes/t4-qlora.yaml --memory-budget 15GB [--dataset pairs.jsonl]``.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

from alignment.settings import SettingsError
from alignment.train_config import TrainConfig

GIB = 2**30
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
# Bytes per parameter of bitsandbytes NF4 with double quantisation (4 bits + ~0.127 bits of constants).
_NF4_BYTES = 0.5 + 0.127 / 8
# TRL's fused log-prob head projects hidden states through the LM head one tile at a time: up to
# trl.kernels.chunked_logprob.TOKEN_CHUNK_SIZE tokens by trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE vocabulary
# columns. The (tokens x vocab) logits never exist whole.
_LOGPROB_TILE_TOKENS = 4096
_LOGPROB_TILE_VOCAB = 32768
# Saved activations of one decoder layer, per token, in units of hidden size (H) and intermediate size (I):
# norms, q/k/v/o inputs and outputs, attention output, residuals (~10 H) and the MLP's gate/up/act/product (4 I).
_ACT_H, _ACT_I = 10.0, 4.0
# LoRA with dropout > 0 keeps the dropped-out copy of each adapted input alive for backward
# (q,k,v,o,gate,up ~ 6 H, down ~ 1 I); with dropout 0 peft passes the input through unchanged. Charged on CPU only:
# on CUDA (fp16/bf16 autocast) two model shapes without checkpointing kept 0.97-1.00 x the activations of the
# terms above alone (bench_gpu_memory.py).
_LORA_ACT_H, _LORA_ACT_I = 6.0, 1.0
# On CPU the tiles are folded by torch ops that make float32 temporaries of the tile (logits, exp, products, the
# gradient); measured against peak RSS (bench_memory.py, vocabulary 49,152) the transient is ~12 float32 tiles.
_CPU_TILE_COPIES = 12.0
# On CUDA a Triton kernel folds the tile in place: one tile in the compute dtype (forward or backward, never both;
# bench_gpu_memory.py), plus float32 copies of the hidden states for the head's gradient.
_CUDA_TILE_COPIES = 1.0
# The reference precompute (precompute_reference) runs the head under no_grad: fewer float32 temporaries of the tile
# than a training step's. Calibrated on bench_memory.py's batch1-len256-top15-500pairs, where the precompute's
# batches of 8 pairs are the run's peak; checked on batch1-len256-cache.
_CPU_NOGRAD_TILE_COPIES = 3.5
# Allocator slack on top of the tensors we count.
_FRAGMENTATION = 0.10
_CUDA_CONTEXT = 600 * 2**20


class MemoryBudgetError(SettingsError):
    """A memory budget string could not be read."""


def parse_size(text: str | int | float) -> int:
    """'15GB', '15 GiB', '800MB', '1.5g', 2e9 -> bytes. GB is 10^9, GiB is 2^30."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise MemoryBudgetError(f"memory budget {text} must be positive, e.g. 15GB.")
        return int(text)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise MemoryBudgetError(f"memory budget {text!r} is not a size; write it like 15GB, 12GiB or 800MB.")
    value = float(match.group(1)) * _UNITS[unit]
    if value <= 0:
        raise MemoryBudgetError(f"memory budget {text!r} must be positive, e.g. 15GB.")
    return int(value)


def format_size(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 4 else f"{n / 2**20:.0f} MiB"


@dataclass
class ModelShape:
    """The numbers the planner needs from a model config."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    tied_embeddings: bool
    total_params: int = 0
    linear_shapes: list[tuple[str, int, int]] = field(default_factory=list)  # (module name, in, out) per layer

    @property
    def kv_dim(self) -> int:
        return self.hidden_size // self.num_heads * self.num_kv_heads


def shape_of(model_or_config: Any) -> ModelShape:
    """Read a transformers config, a model (or peft model) or a LoadedModel."""
    model = getattr(model_or_config, "model", model_or_config)
    config = getattr(model, "config", model_or_config)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    try:
        h, i, n = text.hidden_size, text.intermediate_size, text.num_hidden_layers
        heads, vocab = text.num_attention_heads, text.vocab_size
    except AttributeError as exc:
        raise SettingsError(f"The memory planner needs a decoder config with hidden_size, intermediate_size, "
                            f"num_hidden_layers, num_attention_heads and vocab_size ({exc}).") from exc
    kv = getattr(text, "num_key_value_heads", None) or heads
    tied = bool(getattr(text, "tie_word_embeddings", getattr(config, "tie_word_embeddings", True)))
    shape = ModelShape(h, i, n, heads, kv, vocab, tied)
    kv_dim = shape.kv_dim
    shape.linear_shapes = [("q_proj", h, h), ("k_proj", h, kv_dim), ("v_proj", h, kv_dim), ("o_proj", h, h),
                           ("gate_proj", h, i), ("up_proj", h, i), ("down_proj", i, h)]
    if hasattr(model, "parameters") and callable(model.parameters):
        shape.total_params = sum(p.numel() for p in model.parameters())
    else:
        per_layer = sum(a * b for _, a, b in shape.linear_shapes) + 2 * h
        shape.total_params = n * per_layer + vocab * h * (1 if tied else 2) + h
    return shape


@dataclass
class MemoryPlan:
    """The estimate: total, its parts, whether it fits, and what to change when it does not."""

    total_bytes: int
    parts: dict[str, int]
    budget_bytes: int
    device: str
    fits: bool
    suggestion: str | None = None
    shared: tuple[str, ...] = ()  # parts that happen at different moments and reuse one block: the largest counts

    def shared_note(self) -> str | None:
        if not self.shared:
            return None
        names = ", ".join(name.replace("_", " ") for name in self.shared)
        return (f"On {self.device}, {names} happen at different moments of a step and reuse the same memory, so the "
                f"total counts only the largest of them.")

    def precompute_note(self) -> str:
        return ("The reference precompute runs before training, with no optimizer state, gradients or activations "
                "yet: the total is the larger of it (weights, adapters, reference precompute, cache, overhead) and a "
                "training step (every other part).")

    def describe(self) -> str:
        lines = [f"Estimated peak memory {format_size(self.total_bytes)} of {format_size(self.budget_bytes)} "
                 f"on {self.device}: {'fits' if self.fits else 'does NOT fit'}."]
        lines += [f"  {name:<20} {format_size(size)}" + (" (shared)" if name in self.shared else "")
                  for name, size in self.parts.items()]
        if self.shared:
            lines.append(self.shared_note())
        if "reference_precompute" in self.parts:
            lines.append(self.precompute_note())
        if self.suggestion:
            lines.append(self.suggestion)
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"total_bytes": self.total_bytes, "parts": dict(self.parts), "budget_bytes": self.budget_bytes,
                "device": self.device, "fits": self.fits, "suggestion": self.suggestion, "shared": list(self.shared)}


def _dtype_bytes(config: TrainConfig, device: str) -> int:
    precision = config.precision
    if precision == "auto":
        precision = "fp32" if not device.startswith("cuda") else "half"
    return 4 if precision == "fp32" else 2


def _lora_params(shape: ModelShape, config: TrainConfig) -> int:
    targets = config.target_modules()
    per_layer = 0
    for name, fan_in, fan_out in shape.linear_shapes:
        if targets == "all-linear" or any(name == t or name.endswith(t) for t in targets):
            per_layer += config.lora_r * (fan_in + fan_out)
    return per_layer * shape.num_layers


def _parts(shape: ModelShape, config: TrainConfig, device: str, tokens_per_seq: int | None,
           dataset_tokens: int | None = None) -> dict[str, int]:
    weight_bytes = _dtype_bytes(config, device)
    h, i, n_layers, vocab = shape.hidden_size, shape.intermediate_size, shape.num_layers, shape.vocab_size
    embed_params = vocab * h * (1 if shape.tied_embeddings else 2)
    body_params = max(0, shape.total_params - embed_params)
    lora = config.lora_r > 0
    if config.load_in_4bit:
        # bitsandbytes quantises the decoder's linear layers; embeddings, head and norms stay in compute dtype.
        weights = body_params * _NF4_BYTES + embed_params * weight_bytes
    else:
        weights = shape.total_params * weight_bytes

    trainable = _lora_params(shape, config) if lora else shape.total_params
    # peft keeps adapters in float32 (TRL casts a 4-bit model's to bf16, and alignment.train casts them back for fp16
    # training; float32 is the upper bound).
    trainable_bytes = 4 if lora else weight_bytes
    lora_params = trainable * trainable_bytes if lora else 0
    grads = trainable * trainable_bytes
    optimizer = trainable * 8  # AdamW: two float32 moments per trainable parameter
    # Full fine-tuning: TRL loads a second, frozen copy of the model as the reference (not when the reference
    # log-probs are precomputed: TRL then drops it).
    reference_weights = 0 if lora or config.precompute_reference else weights
    # Layers below the lowest adapter have nothing to train: autograd keeps no activations for them.
    saved_layers = min(config.lora_layers, n_layers) if lora and config.lora_layers else n_layers

    seq = config.max_length or 1024
    if tokens_per_seq is not None:
        seq = min(seq, tokens_per_seq)
    sequences = 2 * config.per_device_train_batch_size  # chosen + rejected in one concatenated forward
    tokens = sequences * seq
    cuda = device.startswith("cuda")
    act_bytes = weight_bytes if config.precision != "auto" or cuda else 4
    per_token_layer = (_ACT_H * h + _ACT_I * i) * act_bytes
    if lora and config.lora_dropout > 0 and not cuda:
        per_token_layer += (_LORA_ACT_H * h + _LORA_ACT_I * i) * act_bytes
    if config.gradient_checkpointing:
        # Only each layer's input is kept; one layer is recomputed (with its full activations) at a time.
        activations = tokens * saved_layers * h * act_bytes
        recompute = tokens * per_token_layer
    else:
        activations = tokens * saved_layers * per_token_layer
        recompute = 0
    activations += tokens * h * act_bytes * 2  # embeddings output and final norm
    tile = min(tokens, _LOGPROB_TILE_TOKENS) * min(vocab, _LOGPROB_TILE_VOCAB)
    if cuda:
        logits = tile * act_bytes * _CUDA_TILE_COPIES + tokens * h * 4 * 2
    else:
        logits = tile * 4 * _CPU_TILE_COPIES
    # The reference forward runs after the policy forward, under no_grad: a transient of one layer.
    reference = 0 if config.precompute_reference else tokens * per_token_layer
    # The retain loss (alignment.retain) runs a batch of prompts through the adapted layers in the same step, with
    # gradients: its activations live alongside the pairs'. Prompt lengths are unknown here; max_length bounds them.
    retain = (config.retain_batch_size * seq * (saved_layers * per_token_layer + 2 * h * act_bytes)
              if lora and config.retain_weight > 0 else 0)
    # precompute_reference reads every pair once before training, precompute_batch_size pairs at a time, under
    # no_grad: the head's tile and one layer at a time, before any optimizer state, gradient or saved activation
    # exists. A phase of its own: the total is the larger of it and a training step (_sum_parts).
    precompute = 0
    if config.precompute_reference:
        pre_tokens = 2 * config.precompute_batch_size * seq
        pre_tile = min(pre_tokens, _LOGPROB_TILE_TOKENS) * min(vocab, _LOGPROB_TILE_VOCAB)
        head = pre_tile * act_bytes * _CUDA_TILE_COPIES if cuda else pre_tile * 4 * _CPU_NOGRAD_TILE_COPIES
        precompute = head + pre_tokens * (_ACT_H * h + _ACT_I * i) * act_bytes
    # cache_frozen_layers keeps the output of the highest frozen layer for every token of every chosen and rejected
    # sequence (alignment.frozen_layers) for the whole run, in RAM. On CUDA that is host memory, not the GPU's, so it
    # is left out of a GPU plan.
    frozen = (dataset_tokens * h * act_bytes if dataset_tokens and lora and config.cache_frozen_layers
              and config.precompute_reference and config.lora_layers and not cuda else 0)
    parts = {
        "weights": int(weights),
        "lora_params": int(lora_params),
        "grads": int(grads),
        "optimizer": int(optimizer),
        "activations": int(activations),
        "layer_recompute": int(recompute),
        "logits": int(logits),
        "reference_forward": int(reference),
        "reference_weights": int(reference_weights),
        "retain_activations": int(retain),
        "frozen_layer_cache": int(frozen),
        "reference_precompute": int(precompute),
    }
    parts = {name: size for name, size in parts.items()
             if size or name not in ("layer_recompute", "reference_weights", "retain_activations",
                                     "frozen_layer_cache", "reference_precompute")}
    subtotal = _sum_parts(parts, device)
    parts["overhead"] = int(subtotal * _FRAGMENTATION + (_CUDA_CONTEXT if cuda else 0))
    return parts


def _shared_parts(parts: dict[str, int], device: str) -> tuple[str, ...]:
    """The transients that never coexist and, on CUDA, reuse one block of the caching allocator: the reference
    forward (between the policy forward and the backward), the log-prob head's backward (first in the backward)
    and the recomputation of one checkpointed layer (later in the backward). On CPU the planner stays the sum it
    was calibrated as against peak RSS."""
    if not device.startswith("cuda"):
        return ()
    return tuple(name for name in ("logits", "reference_forward", "layer_recompute") if name in parts)


# What exists while the reference precompute runs, before training: no optimizer state, gradients or activations.
_PRECOMPUTE_PHASE = ("weights", "lora_params", "reference_precompute", "frozen_layer_cache", "overhead")


def _sum_parts(parts: dict[str, int], device: str) -> int:
    """The peak: a training step's parts (shared transients counted once), or the reference precompute's phase
    before training, whichever is larger."""
    shared = _shared_parts(parts, device)
    step = sum(size for name, size in parts.items() if name not in shared and name != "reference_precompute") + max(
        (parts[name] for name in shared), default=0)
    if "reference_precompute" not in parts:
        return step
    return max(step, sum(parts.get(name, 0) for name in _PRECOMPUTE_PHASE))


def default_budget(device: str) -> int:
    """CUDA: the GPU's total memory. CPU: the system memory available right now."""
    if device.startswith("cuda"):
        import torch

        index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        return int(torch.cuda.get_device_properties(index).total_memory)
    import psutil

    return int(psutil.virtual_memory().available)


def estimate(model_or_config: Any, config: TrainConfig, budget_bytes: int | None = None,
             device: str | None = None, tokens_per_seq: int | None = None,
             dataset_tokens: int | None = None) -> MemoryPlan:
    """Estimate peak memory of one DPO training step. ``tokens_per_seq``: the longest tokenised pair, if known
    (padding goes to the longest sequence in a batch, so short data never reaches max_length). ``dataset_tokens``:
    the tokens of every chosen and rejected sequence of the data, if known; the frozen-layer cache holds one hidden
    state per token of them (``cache_frozen_layers``, counted on CPU)."""
    shape = model_or_config if isinstance(model_or_config, ModelShape) else shape_of(model_or_config)
    device = device or config.resolved_device()
    budget = int(budget_bytes) if budget_bytes else default_budget(device)
    parts = _parts(shape, config, device, tokens_per_seq, dataset_tokens)
    total = _sum_parts(parts, device)
    fits = total <= budget
    suggestion = None if fits else suggest(shape, config, budget, device, tokens_per_seq, dataset_tokens)
    return MemoryPlan(total_bytes=int(total), parts=parts, budget_bytes=budget, device=device, fits=fits,
                      suggestion=suggestion, shared=_shared_parts(parts, device))


def suggest(shape: ModelShape, config: TrainConfig, budget: int, device: str,
            tokens_per_seq: int | None = None, dataset_tokens: int | None = None) -> str:
    """Search the cheapest set of changes that fits; say it in recipe terms."""
    current_len = config.max_length or 1024
    lengths = [current_len] + [v for v in (2048, 1024, 768, 512, 384, 256, 128) if v < current_len]
    batches = [config.per_device_train_batch_size] + [
        b for b in (8, 4, 2, 1) if b < config.per_device_train_batch_size]
    checkpointing = [config.gradient_checkpointing] + ([True] if not config.gradient_checkpointing else [])
    four_bit = [config.load_in_4bit] + (
        [True] if not config.load_in_4bit and config.lora_r > 0 and device.startswith("cuda") else [])
    caches = [config.cache_frozen_layers] + ([False] if config.cache_frozen_layers else [])
    # The precompute's batch (0 = the default): smaller batches shrink the phase before training.
    references = [config.reference_batch_size] + ([b for b in (4, 2, 1) if b < config.precompute_batch_size]
                                                  if config.precompute_reference else [])
    effective = config.per_device_train_batch_size * config.gradient_accumulation_steps
    options = []
    for length, batch, ckpt, q4, cache, reference in itertools.product(lengths, batches, checkpointing, four_bit,
                                                                        caches, references):
        candidate = replace(config, max_length=length, per_device_train_batch_size=batch,
                            gradient_accumulation_steps=max(1, math.ceil(effective / batch)),
                            gradient_checkpointing=ckpt, load_in_4bit=q4, merge_after=False,
                            cache_frozen_layers=cache, reference_batch_size=reference)
        total = _sum_parts(_parts(shape, candidate, device, tokens_per_seq, dataset_tokens), device)
        if total <= budget:
            changes = (length != current_len) + (batch != config.per_device_train_batch_size) + \
                      (ckpt != config.gradient_checkpointing) + (q4 != config.load_in_4bit) + \
                      (cache != config.cache_frozen_layers) + (reference != config.reference_batch_size)
            # Prefer few changes, then keeping long sequences, then bigger batches.
            options.append(((changes, -length, -batch), candidate, total))
    if not options:
        smallest = replace(config, max_length=128, per_device_train_batch_size=1, gradient_checkpointing=True,
                           load_in_4bit=config.load_in_4bit or (config.lora_r > 0 and device.startswith("cuda")),
                           merge_after=False, cache_frozen_layers=False,
                           reference_batch_size=1 if config.precompute_reference else config.reference_batch_size)
        need = _sum_parts(_parts(shape, smallest, device, tokens_per_seq), device)
        tried = ["max_length 128", "batch size 1", "gradient checkpointing"]
        if smallest.precompute_reference:
            tried.append("a reference batch of 1")
        if config.cache_frozen_layers:
            tried.append("no frozen-layer cache")
        if smallest.load_in_4bit:
            tried.append("4-bit weights")
        return (f"Even with {', '.join(tried[:-1])} and {tried[-1]} this needs "
                f"{format_size(need)} of {format_size(budget)}: use a smaller model"
                + (" or LoRA (lora_r > 0)" if config.lora_r == 0 else "") + ".")
    options.sort(key=lambda item: item[0])
    # Offer the best option plus one alternative that changes something else, e.g. "max_length 512 or batch 1".
    best = options[0]
    def kinds(candidate: TrainConfig) -> set[str]:
        return {change.split()[0] for change in _changes(config, candidate)}

    alternatives = [best] + [o for o in options[1:] if o[0][0] == best[0][0] and
                             kinds(o[1]) != kinds(best[1])][:1]
    phrases = [" and ".join(_changes(config, cand)) + f" (~{format_size(total)})" for _, cand, total in alternatives]
    return f"To fit in {format_size(budget)}: set " + ", or ".join(phrases) + "."


def _changes(config: TrainConfig, candidate: TrainConfig) -> list[str]:
    out = []
    if candidate.max_length != config.max_length:
        out.append(f"max_length {candidate.max_length}")
    if candidate.per_device_train_batch_size != config.per_device_train_batch_size:
        out.append(f"per_device_train_batch_size {candidate.per_device_train_batch_size} "
                   f"(gradient_accumulation_steps {candidate.gradient_accumulation_steps} keeps the effective batch)")
    if candidate.gradient_checkpointing != config.gradient_checkpointing:
        out.append("gradient_checkpointing true")
    if candidate.load_in_4bit != config.load_in_4bit:
        out.append("load_in_4bit true")
    if candidate.cache_frozen_layers != config.cache_frozen_layers:
        out.append("cache_frozen_layers false")
    if candidate.reference_batch_size != config.reference_batch_size:
        out.append(f"reference_batch_size {candidate.reference_batch_size}")
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from transformers import AutoConfig

    from alignment.models import ModelLoadError, resolve_source
    from alignment.train_config import load_train_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="Recipe YAML (recipes/*.yaml).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--memory-budget", default=None, help="e.g. 15GB; default: the device's memory.")
    parser.add_argument("--device", default=None, help="Plan for this device (cpu, cuda) instead of this machine's.")
    parser.add_argument("--dataset", default=None,
                        help="Preference pairs (JSONL) to plan for: their longest pair bounds the padded batch, and "
                        "their tokens size the frozen-layer cache (cache_frozen_layers). Default: max_length.")
    args = parser.parse_args(argv)
    from alignment.train import DatasetError, load_preference_rows, pair_token_counts

    try:
        config = load_train_config(args.config, args.overrides)
        source, _ = resolve_source(config.model)
        model_config = AutoConfig.from_pretrained(source)
        device = args.device or config.resolved_device()
        budget = parse_size(args.memory_budget) if args.memory_budget else None
        if budget is None and device.startswith("cuda") and not config.resolved_device().startswith("cuda"):
            raise SettingsError("Planning for CUDA on a machine without one: give --memory-budget (e.g. 15GB).")
        longest = dataset_tokens = None
        if args.dataset:
            from transformers import AutoTokenizer

            rows = load_preference_rows(args.dataset)
            longest, dataset_tokens = pair_token_counts(rows, AutoTokenizer.from_pretrained(source), config.max_length)
        plan = estimate(model_config, config, budget, device=device, tokens_per_seq=longest,
                        dataset_tokens=dataset_tokens)
    except (SettingsError, ModelLoadError, DatasetError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(plan.describe())
    return 0 if plan.fits else 1


if __name__ == "__main__":
    raise SystemExit(main())
