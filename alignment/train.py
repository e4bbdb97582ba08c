"""DPO training with TRL: one code path for the command line and the app's Train tab.

``train(config, on_log=None, should_stop=None, resume=True)`` loads and checks the preference data, plans
memory (refusing with a suggestion when the run will not fit), loads the model, runs ``trl.DPOTrainer`` with
LoRA, forwards every log line to ``on_log``, stops within one step when ``should_stop()`` turns true (saving a
checkpoint to resume from), and writes ``adapter/`` (LoRA + tokenizer + model card), ``config.yaml`` and
``metrics.jsonl`` under the run's output folder.

Run it:
    python -m alignment.train --config recipes/cpu-lora.yaml --dataset prefs.jsonl
    python -m alignment.train --config recipes/t4-qlora.yaml --dataset prefs.jsonl --set beta=0.2
    accelerate launch -m alignment.train --config recipes/t4-qlora.yaml --dataset prefs.jsonl   # several GPUs
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignment import completion_logprobs
from alignment.frozen_layers import FrozenLayerCache
from alignment.memory import MemoryPlan, estimate, format_size, parse_size, suggest
from alignment.reference_logps import sorted_reference_trainer_class
from alignment.settings import SettingsError, save_yaml, to_dict
from alignment.train_config import TrainConfig, load_train_config

LogCallback = Callable[[dict[str, Any]], None]
StopCheck = Callable[[], bool]
# The metrics the UI charts; TRL 1.16 logs them under these names.
CHART_KEYS = ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected", "learning_rate")
_ROLES = ("system", "user", "assistant")


class TrainingError(RuntimeError):
    """A run could not start or had to stop; the message says what happened and what to change."""


class DatasetError(TrainingError):
    """The preference data is missing, empty or malformed; the message names the bad rows."""


@dataclass
class TrainResult:
    """What a finished or cancelled run left behind."""

    state: str  # "finished" or "cancelled"
    output_dir: str
    adapter_dir: str | None
    global_step: int
    max_steps: int
    metrics: dict[str, float] = field(default_factory=dict)  # last training log line
    eval_metrics: dict[str, float] = field(default_factory=dict)
    resumed_from: str | None = None
    merged_dir: str | None = None
    train_pairs: int = 0
    eval_pairs: int = 0
    elapsed_seconds: float = 0.0
    memory_plan: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None  # the refusal gate fitted after training (refusal_gate): layer, fitted_on
    gate_note: str = ""  # why a requested gate was not fitted, and how to fit it later
    # cache_frozen_layers: how many layers were skipped, sequences recorded, forward passes served from the cache
    # and run in full (an empty dict: the cache was off or did not apply)
    frozen_layers: dict[str, int] = field(default_factory=dict)


# --- data ---------------------------------------------------------------------------------------------------


def read_rows(source: str) -> list[dict[str, Any]]:
    """The raw rows of a .jsonl / .parquet file or a Hub dataset id, every key kept (DatasetError if unreadable)."""
    path = Path(source).expanduser()
    if path.suffix == ".jsonl" or path.suffix == ".json":
        if not path.is_file():
            raise DatasetError(f"Dataset file {source} does not exist. Export one from the Dataset tab or "
                               "`python -m labeling.export`.")
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{source} line {number} is not valid JSON ({exc.msg}). Fix or delete that "
                                   "line.") from exc
            rows.append(row)
        return rows
    if path.suffix == ".parquet":
        if not path.is_file():
            raise DatasetError(f"Dataset file {source} does not exist.")
        import pandas as pd

        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several unrelated types for a bad file
            raise DatasetError(f"{source} could not be read as Parquet ({exc}).") from exc
        return [_plain(row) for row in frame.to_dict(orient="records")]
    if path.exists():
        raise DatasetError(f"{source}: use a .jsonl or .parquet file (or a Hub dataset id owner/name).")
    parts = source.split("/")
    if len(parts) != 2 or not all(parts):
        raise DatasetError(f"Dataset {source!r} is not a file here and not a Hub id of the form owner/name.")
    import datasets

    try:
        hub = datasets.load_dataset(source, split="train")
    except Exception as exc:  # datasets wraps network and format errors in many types
        raise DatasetError(f"Could not load Hub dataset {source!r} ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}). Check the id, the network and "
                           "HF_TOKEN, or export the data to a .jsonl file.") from exc
    return [dict(row) for row in hub]


def _plain(value: Any) -> Any:
    """numpy arrays and scalars from pandas -> lists and Python values."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _row_problem(row: Any) -> tuple[str | None, str]:
    """(problem or None, 'conversational' | 'text')."""
    if not isinstance(row, dict):
        return "is not an object with prompt/chosen/rejected", ""
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in row]
    if missing:
        return f"has no {', '.join(missing)}", ""
    prompt = row["prompt"]
    kind = "conversational" if isinstance(prompt, list) else "text"
    if kind == "text":
        if not isinstance(prompt, str) or not prompt.strip():
            return "prompt must be a non-empty string or a list of messages", kind
        for key in ("chosen", "rejected"):
            if not isinstance(row[key], str) or not row[key].strip():
                return f"{key} must be a non-empty string (the prompt is a string)", kind
        return None, kind
    problem = _messages_problem("prompt", prompt)
    if problem:
        return problem, kind
    if prompt[-1]["role"] == "assistant":
        return "prompt ends with an assistant message; it must end with the user turn to answer", kind
    for key in ("chosen", "rejected"):
        value = row[key]
        if not isinstance(value, list):
            return f"{key} must be a list of assistant messages (the prompt is a message list)", kind
        problem = _messages_problem(key, value)
        if problem:
            return problem, kind
        if any(m["role"] != "assistant" for m in value):
            return f"{key} must contain only assistant messages", kind
    if row["chosen"] == row["rejected"]:
        return "chosen and rejected are identical, so there is nothing to learn", kind
    return None, kind


def _messages_problem(key: str, messages: list[Any]) -> str | None:
    if not messages:
        return f"{key} is an empty message list"
    for message in messages:
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            return f"{key} has a message without role/content"
        if message["role"] not in _ROLES:
            return f"{key} has a message with role {message['role']!r} (use system, user or assistant)"
        if not isinstance(message["content"], str) or not message["content"].strip():
            return f"{key} has a message with empty content"
    return None


def validate_rows(rows: list[Any], source: str = "dataset") -> list[dict[str, Any]]:
    """Check TRL's preference format; raise DatasetError naming bad rows (1-based). Returns the three columns."""
    if not rows:
        raise DatasetError(f"{source} has no rows. Label some pairs first (Label tab) and export them.")
    problems: list[str] = []
    kinds: dict[str, list[int]] = {}
    for number, row in enumerate(rows, start=1):
        problem, kind = _row_problem(row)
        if problem:
            problems.append(f"row {number}: {problem}")
        elif kind:
            kinds.setdefault(kind, []).append(number)
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise DatasetError(f"{source} has {len(problems)} malformed row(s) of {len(rows)}: {shown}. Each row needs "
                           "prompt (a string or a list of messages ending with the user turn) and chosen/rejected "
                           "(strings, or lists of assistant messages).")
    if len(kinds) > 1:
        minority = min(kinds.values(), key=len)
        raise DatasetError(f"{source} mixes conversational rows (message lists) and plain-text rows; rows "
                           f"{', '.join(map(str, minority[:10]))} differ from the rest. Use one format.")
    return [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]


def load_preference_rows(source: str) -> list[dict[str, Any]]:
    if not source:
        raise DatasetError("No dataset given: set dataset in the recipe or pass --dataset FILE_OR_HUB_ID.")
    return validate_rows(read_rows(source), source)


def split_rows(rows: list[dict[str, Any]], config: TrainConfig) -> tuple[Any, Any | None]:
    """Deterministic train/eval split (same seed -> same split, so a resumed run sees the same data)."""
    import datasets

    dataset = datasets.Dataset.from_list(rows)
    eval_count = int(round(len(rows) * config.eval_split))
    if config.eval_split > 0 and eval_count >= 1 and len(rows) - eval_count >= 1:
        parts = dataset.train_test_split(test_size=eval_count, seed=config.seed, shuffle=True)
        train_set, eval_set = parts["train"], parts["test"]
    else:
        train_set, eval_set = dataset, None
    needed = config.per_device_train_batch_size * config.gradient_accumulation_steps
    if len(train_set) < needed:
        held = f" ({len(rows) - len(train_set)} held out for evaluation)" if eval_set is not None else ""
        raise DatasetError(
            f"Only {len(train_set)} training pairs{held}, but one optimizer step needs batch size "
            f"{config.per_device_train_batch_size} × gradient accumulation {config.gradient_accumulation_steps} = "
            f"{needed} pairs. Label more pairs, or lower per_device_train_batch_size / gradient_accumulation_steps"
            + (" / eval_split." if eval_set is not None else ".")
        )
    return train_set, eval_set


def pair_token_counts(rows: list[dict[str, Any]], tokenizer: Any, max_length: int | None = None,
                      limit: int = 2000) -> tuple[int, int]:
    """For the memory planner: the longest prompt+answer in tokens, and the tokens of every chosen and rejected
    sequence (each cut at ``max_length``, as training cuts them). Counted over the first ``limit`` rows; the total is
    scaled up to all rows beyond that."""
    longest = total = 0
    for row in rows[:limit]:
        for key in ("chosen", "rejected"):
            if isinstance(row["prompt"], list):
                ids = tokenizer.apply_chat_template(row["prompt"] + row[key], tokenize=True)
                if isinstance(ids, dict) or hasattr(ids, "keys"):
                    ids = ids["input_ids"]
                n = len(ids)
            else:
                n = len(tokenizer(row["prompt"] + row[key])["input_ids"]) + 1
            longest = max(longest, n)
            total += min(n, max_length) if max_length else n
    counted = min(len(rows), limit)
    return longest, (total * len(rows) // counted if counted else 0)


# --- the run ------------------------------------------------------------------------------------------------


def latest_checkpoint(config: TrainConfig) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    folder = config.checkpoint_dir
    if not folder.is_dir():
        return None
    return get_last_checkpoint(str(folder))


def _make_callback(config: TrainConfig, on_log: LogCallback | None, should_stop: StopCheck | None,
                   metrics_path: Path, started: float) -> Any:
    from transformers import TrainerCallback

    class ForwardAndGuard(TrainerCallback):
        """Forward TRL's log lines, stop on request (saving a checkpoint) or on a non-finite loss."""

        def __init__(self) -> None:
            self.cancelled = False
            self.bad_loss: tuple[int, float] | None = None
            self.first_step: int | None = None
            self.last_train_log: dict[str, Any] = {}
            self.last_eval_log: dict[str, Any] = {}

        def on_train_begin(self, args, state, control, **kwargs):
            self.first_step = state.global_step

        def on_step_end(self, args, state, control, **kwargs):
            if should_stop is not None and should_stop():
                self.cancelled = True
                control.should_save = True
                control.should_training_stop = True
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs:
                return control
            record = {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                      for k, v in logs.items()}
            record["step"] = state.global_step
            record["max_steps"] = state.max_steps
            record.setdefault("epoch", state.epoch)
            elapsed = time.perf_counter() - started
            record["elapsed"] = round(elapsed, 2)
            done = state.global_step - (self.first_step or 0)
            remaining = max(0, state.max_steps - state.global_step)
            record["eta"] = round(elapsed / done * remaining, 1) if done > 0 else None
            watched = [record.get(k) for k in ("loss", "eval_loss", "rewards/margins", "grad_norm")]
            bad = [v for v in watched if isinstance(v, float) and not math.isfinite(v)]
            if bad:
                self.bad_loss = (state.global_step, bad[0])
                control.should_training_stop = True
                control.should_save = False  # the weights are already poisoned; keep the last good checkpoint
            if any(k.startswith("eval_") for k in record):
                self.last_eval_log = record
            elif "loss" in record:
                self.last_train_log = record
            if state.is_world_process_zero:  # under accelerate every rank logs; one file, one writer
                with metrics_path.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record, default=str) + "\n")
            if on_log is not None:
                on_log(record)
            return control

    return ForwardAndGuard()


def _gate_card_line(result: TrainResult) -> str:
    if result.gate:
        return (f"- **Refusal gate:** `refusal_gate.json`, {result.gate['summary']}: the adapter answers what it "
                "flags as harmful, the base model the rest (this app and `alignment.evaluate` route through it; "
                "plain peft loading ignores it)\n")
    return f"- **Refusal gate:** none. {result.gate_note}\n" if result.gate_note else ""


def _model_card(config: TrainConfig, base_source: str, result: TrainResult) -> str:
    settings = "\n".join(f"| {k} | {v} |" for k, v in to_dict(config).items())
    metrics = {**result.metrics, **result.eval_metrics}
    shown = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                      for k, v in metrics.items() if k not in ("eta",))
    return f"""---
library_name: peft
base_model: {config.model if config.model != 'bundled' else 'HuggingFaceTB/SmolLM2-135M-Instruct'}
tags: [dpo, trl, lora, alignment]
---
# {config.run_name}: LoRA adapter trained with DPO

- **Base model:** {config.model} ({base_source})
- **Data:** {config.dataset} — {result.train_pairs} training pairs, {result.eval_pairs} held out
- **Method:** Direct Preference Optimization (TRL), LoRA r={config.lora_r}, alpha={config.lora_alpha},
  beta={config.beta}, loss {config.loss_type}
- **Steps:** {result.global_step} of {result.max_steps}{' (resumed from ' + result.resumed_from + ')'
                                                        if result.resumed_from else ''}
{_gate_card_line(result)}
Load it with `alignment.models` as the base plus this folder, or with peft:
`PeftModel.from_pretrained(base_model, "<this folder>")`.

## Final metrics

| metric | value |
|---|---|
{shown}

## Configuration

| setting | value |
|---|---|
{settings}
"""


def _oom_message(what: str, plan: MemoryPlan | None, config: TrainConfig, shape: Any) -> str:
    hint = ""
    if plan is not None and shape is not None:
        hint = " " + suggest(shape, config, int(plan.total_bytes * 0.6), plan.device)
    return (f"Training ran out of {what} memory.{hint} Lower max_length or per_device_train_batch_size (raising "
            "gradient_accumulation_steps keeps the effective batch), or turn on gradient_checkpointing.")


def linear_layer_names(model: Any) -> set[str]:
    """Short names of the model's linear layers (q_proj, down_proj, ...) without the output head, as peft's
    'all-linear' picks them."""
    import torch

    head = model.get_output_embeddings()
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not head}


def _continue_adapter(model: Any, path: Path) -> Any:
    """``model`` wrapped in the trainable LoRA adapter saved at ``path`` (TRL keeps a frozen copy as reference)."""
    if not (path / "adapter_config.json").is_file():
        raise TrainingError(f"init_adapter {path} is not a LoRA adapter folder (no adapter_config.json). Give the "
                            "adapter folder of an earlier run, or leave init_adapter empty to start a fresh one.")
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, str(path), is_trainable=True)
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise TrainingError(f"init_adapter {path} does not fit this base model (trained on another one?): "
                            f"{first}") from exc


def upcast_trainable_for_fp16(model: Any) -> int:
    """Put trainable bfloat16 parameters back in float32; returns how many were changed.

    TRL 1.16 casts a quantized (QLoRA) model's adapter weights to bfloat16, but fp16 mixed precision (the T4's)
    unscales gradients with a GradScaler that has no bfloat16 kernel: the first optimizer step fails. float32
    adapters are peft's default and what the memory planner counts.
    """
    import torch

    changed = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype == torch.bfloat16:
            param.data = param.data.to(torch.float32)
            changed += 1
    return changed


def train(config: TrainConfig, on_log: LogCallback | None = None, should_stop: StopCheck | None = None,
          resume: bool = True, memory_budget: int | str | None = None, force: bool = False,
          on_status: Callable[[str], None] | None = None) -> TrainResult:
    """Run DPO for ``config``. Raises TrainingError (DatasetError for data) with a message for the user."""
    import torch

    from alignment.models import LoadSettings, ModelLoadError, load_model, resolve_source

    started = time.perf_counter()
    status = on_status or (lambda message: None)
    output_dir = Path(config.output_dir)

    status("checking data")
    rows = load_preference_rows(config.dataset)
    train_set, eval_set = split_rows(rows, config)

    device = config.resolved_device()
    try:
        source_path, source = resolve_source(config.model)
        from transformers import AutoConfig, AutoTokenizer

        model_config = AutoConfig.from_pretrained(source_path)
        tokenizer = AutoTokenizer.from_pretrained(source_path)
    except ModelLoadError as exc:
        raise TrainingError(str(exc)) from exc
    except OSError as exc:
        raise TrainingError(f"Could not read model {config.model!r}: {str(exc).splitlines()[0]}") from exc

    status("planning memory")
    budget = parse_size(memory_budget) if memory_budget else None
    longest, dataset_tokens = pair_token_counts(rows, tokenizer, config.max_length)
    plan = estimate(model_config, config, budget, device=device, tokens_per_seq=longest,
                    dataset_tokens=dataset_tokens)
    from alignment.memory import shape_of

    shape = shape_of(model_config)
    if not plan.fits and not force:
        raise TrainingError(f"This run needs about {format_size(plan.total_bytes)} but {plan.device} has "
                            f"{format_size(plan.budget_bytes)}. {plan.suggestion} (Or pass --force to try anyway.)")

    if should_stop is not None and should_stop():
        return TrainResult("cancelled", str(output_dir), None, 0, 0, memory_plan=plan.as_dict())

    status("loading model")
    try:
        loaded = load_model(LoadSettings(model=config.model, device=device, dtype=config.model_dtype(device),
                                         load_in_4bit=config.load_in_4bit))
    except (ModelLoadError, SettingsError) as exc:
        raise TrainingError(str(exc)) from exc
    model, tokenizer = loaded.model, loaded.tokenizer
    peft_config = config.peft_config(shape.num_layers, linear_layer_names(model))
    reference = None
    if config.init_adapter:
        model, peft_config = _continue_adapter(model, Path(config.init_adapter)), None
        if config.init_reference == "base":
            # A separate frozen base: given a ref_model, TRL neither copies the adapter nor disables it for reference.
            reference = load_model(LoadSettings(model=config.model, device=device, dtype=config.model_dtype(device),
                                                load_in_4bit=config.load_in_4bit)).model.eval()
    output_dir.mkdir(parents=True, exist_ok=True)
    save_yaml(config, output_dir / "config.yaml")
    metrics_path = output_dir / "metrics.jsonl"
    checkpoint = latest_checkpoint(config) if resume else None

    import transformers
    from trl import DPOTrainer

    transformers.logging.set_verbosity_error()
    completion_logprobs.enable()  # CPU: the LM head scores completion tokens only, as TRL does on CUDA
    callback = _make_callback(config, on_log, should_stop, metrics_path, started)
    trainer_class, retain_kwargs = DPOTrainer, {}
    if config.retain_weight > 0:
        from alignment import retain

        try:
            prompts = retain.read_retain_prompts(config.retain_prompts, config.retain_label or None)
        except retain.RetainDataError as exc:
            raise DatasetError(str(exc)) from exc
        encoded = retain.encode_prompts(tokenizer, prompts, config.max_length)
        trainer_class = retain.retain_trainer_class(DPOTrainer)
        retain_kwargs = {"retain_batches": retain.RetainBatches(encoded, config.retain_batch_size, config.seed),
                         "retain_weight": config.retain_weight, "retain_last_tokens": config.retain_last_tokens}
    if config.precompute_reference:
        trainer_class = sorted_reference_trainer_class(trainer_class)
    frozen = FrozenLayerCache.for_model(model, peft_config) if config.cache_frozen_layers else None
    status("preparing data" + (" and reference log-probs" if config.precompute_reference else ""))
    try:
        with frozen.recording() if frozen else contextlib.nullcontext():
            trainer = trainer_class(
                model=model,
                ref_model=reference,
                args=config.to_dpo_config(device),
                train_dataset=train_set,
                eval_dataset=eval_set,
                processing_class=tokenizer,
                peft_config=peft_config,
                callbacks=[callback],
                **retain_kwargs,
            )
    except ValueError as exc:
        raise TrainingError(f"TRL refused this configuration: {exc}") from exc
    if config.resolved_precision(device) == "fp16":
        upcast_trainable_for_fp16(trainer.model)
    # Our callback reports progress; the Trainer's own printer would dump raw dicts to stdout.
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)

    status("training" + (f" (resuming from {Path(checkpoint).name})" if checkpoint else ""))
    frozen_summary: dict[str, int] = {}
    try:
        with frozen.serving() if frozen else contextlib.nullcontext():
            trainer.train(resume_from_checkpoint=checkpoint)
        if frozen:
            frozen_summary = frozen.summary()
            frozen.states.clear()  # the memory is not needed after training
    except torch.cuda.OutOfMemoryError as exc:
        raise TrainingError(_oom_message("GPU", plan, config, shape)) from exc
    except MemoryError as exc:
        raise TrainingError(_oom_message("CPU (system)", plan, config, shape)) from exc
    except RuntimeError as exc:
        if "can't allocate memory" in str(exc) or "out of memory" in str(exc).lower():
            raise TrainingError(_oom_message("device", plan, config, shape)) from exc
        raise

    state = trainer.state
    if callback.bad_loss is not None:
        step, loss = callback.bad_loss
        raise TrainingError(
            f"The loss or its gradients became {loss} at step {step}, so training stopped; the weights diverged. Lower "
            f"learning_rate (now {config.learning_rate:g}; try {config.learning_rate / 10:g}), raise warmup, or "
            + ("use precision bf16/fp32 instead of fp16, " if config.resolved_precision(device) == "fp16" else "")
            + "check the data for empty or extremely long answers."
        )
    result = TrainResult(
        state="cancelled" if callback.cancelled else "finished",
        output_dir=str(output_dir),
        adapter_dir=None,
        global_step=state.global_step,
        max_steps=state.max_steps,
        metrics={k: v for k, v in callback.last_train_log.items() if k not in ("eta",)},
        resumed_from=checkpoint,
        frozen_layers=frozen_summary,
        train_pairs=len(train_set),
        eval_pairs=len(eval_set) if eval_set is not None else 0,
        memory_plan=plan.as_dict(),
    )
    if callback.cancelled:
        result.elapsed_seconds = time.perf_counter() - started
        return result

    if eval_set is not None:
        status("evaluating")
        trainer.evaluate()
        result.eval_metrics = {k: v for k, v in callback.last_eval_log.items() if k.startswith("eval_")}

    status("saving adapter")
    adapter_dir = config.adapter_dir
    if "ref" in getattr(trainer.model, "peft_config", {}):
        trainer.model.delete_adapter("ref")  # TRL's frozen copy of init_adapter: the reference, not the result
    if trainer.is_world_process_zero():
        trainer.save_model(str(adapter_dir))
        tokenizer.save_pretrained(str(adapter_dir))
        result.adapter_dir = str(adapter_dir)
        if config.refusal_gate:
            _add_refusal_gate(trainer.model, tokenizer, adapter_dir, config, result, should_stop, status)
        result.elapsed_seconds = time.perf_counter() - started
        (adapter_dir / "README.md").write_text(_model_card(config, source, result), encoding="utf-8")
        (adapter_dir / "training_summary.json").write_text(json.dumps(
            {"base_model": config.model, "base_source": source, "dataset": config.dataset,
             "run_name": config.run_name, "global_step": result.global_step, "max_steps": result.max_steps,
             "metrics": result.metrics, "eval_metrics": result.eval_metrics, "train_pairs": result.train_pairs,
             "eval_pairs": result.eval_pairs, "refusal_gate": result.gate}, indent=2, default=str),
            encoding="utf-8")
        if config.merge_after and config.lora_r > 0:
            status("merging weights")
            merged_dir = output_dir / "merged"
            merged = trainer.model.merge_and_unload()
            merged.save_pretrained(str(merged_dir))
            tokenizer.save_pretrained(str(merged_dir))
            result.merged_dir = str(merged_dir)
    result.elapsed_seconds = time.perf_counter() - started
    return result


class _GateCancelled(Exception):
    pass


def _add_refusal_gate(model: Any, tokenizer: Any, adapter_dir: Path, config: TrainConfig, result: TrainResult,
                      should_stop: StopCheck | None, status: Callable[[str], None]) -> None:
    """Fit a refusal gate on the built-in prompts with the run's own base weights and save it with the adapter.
    The adapter is already saved, so a cancel or a failure here leaves it usable, without a gate, and says how to
    fit one later."""
    from alignment.gate import GateError, fit_gate_with_model
    from alignment.outcome import builtin_gate_options, builtin_gate_prompts

    later = (f"Fit it later with: python -m alignment.gate --adapter {adapter_dir} --model {config.model} "
             "--prompts <a .jsonl of prompts labelled harmful/benign>.")
    cases = builtin_gate_prompts()

    def progress(done: int, total: int) -> None:
        if should_stop is not None and should_stop():
            raise _GateCancelled
        if done == total or done % 160 < 16:  # batches of 16: about every tenth of the built-in prompts
            left = (time.perf_counter() - reading) / done * (total - done)
            status(f"fitting refusal gate: read {done}/{total} prompts" + (
                f", {_format_duration(left)} left" if done < total else ""))

    status(f"fitting refusal gate: read 0/{len(cases)} prompts")
    reading = time.perf_counter()
    try:
        gate = fit_gate_with_model(model, tokenizer, cases, source="built-in labeling and red-team train prompts",
                                   on_progress=progress, **builtin_gate_options())
    except _GateCancelled:
        result.gate_note = f"Cancelled while fitting the refusal gate; the adapter is saved without one. {later}"
        return
    except GateError as exc:
        result.gate_note = f"The refusal gate could not be fitted: {exc} The adapter is saved without one. {later}"
        return
    gate.save(adapter_dir)
    result.gate = {"layer": gate.layer, "threshold": gate.threshold, "fitted_on": gate.fitted_on,
                   "summary": gate.summary()}


# --- command line -------------------------------------------------------------------------------------------


def _format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_line(record: dict[str, Any]) -> str:
    """One line per log: step/max, loss, margin, accuracy, time left."""
    if any(k.startswith("eval_") for k in record):
        return (f"eval  loss {record.get('eval_loss', float('nan')):.4f}  "
                f"margin {record.get('eval_rewards/margins', float('nan')):.3f}  "
                f"accuracy {record.get('eval_rewards/accuracies', float('nan')):.2f}")
    if "loss" not in record:
        return ""
    return (f"step {record['step']}/{record['max_steps']}  loss {record['loss']:.4f}  "
            f"margin {record.get('rewards/margins', float('nan')):.3f}  "
            f"accuracy {record.get('rewards/accuracies', float('nan')):.2f}  "
            f"lr {record.get('learning_rate', 0):.2e}  left {_format_duration(record.get('eta'))}")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m alignment.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="Recipe YAML, e.g. recipes/cpu-lora.yaml.")
    parser.add_argument("--dataset", help="Preference data: .jsonl, .parquet or a Hub dataset id.")
    parser.add_argument("--output-dir", help="Where to write the run (default runs/<run_name>).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Override a recipe field, e.g. --set beta=0.2 (repeatable).")
    parser.add_argument("--memory-budget", help="Memory to plan for, e.g. 15GB (default: the device's).")
    parser.add_argument("--force", action="store_true", help="Start even when the memory plan says it won't fit.")
    parser.add_argument("--no-resume", action="store_true", help="Ignore existing checkpoints and start over.")
    args = parser.parse_args(argv)

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    overrides = list(args.overrides)
    if args.dataset:
        overrides.append(f"dataset={json.dumps(args.dataset)}")
    if args.output_dir:
        overrides.append(f"output_dir={json.dumps(args.output_dir)}")
    try:
        config = load_train_config(args.config, overrides)
        result = train(config, on_log=lambda r: (line := progress_line(r)) and print(line, flush=True),
                       resume=not args.no_resume, memory_budget=args.memory_budget, force=args.force,
                       on_status=lambda s: print(f"[{s}]", flush=True))
    except (SettingsError, TrainingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; run the same command again to resume from the last checkpoint.", file=sys.stderr)
        return 130
    print(f"done: {result.global_step}/{result.max_steps} steps; adapter in {result.adapter_dir}")
    if result.gate:
        print(f"{result.gate['summary']}; saved with the adapter")
    if result.gate_note:
        print(f"warning: {result.gate_note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
