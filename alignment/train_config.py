"""DPO training settings: one dataclass that recipes (recipes/*.yaml) and ``--set key=value`` fill in.

``TrainConfig`` holds what matters of TRL 1.16's ``DPOConfig`` plus the LoRA / 4-bit / data settings this
project adds, validates itself on construction, and builds the ``trl.DPOConfig`` with :meth:`to_dpo_config`.
Load a recipe with ``load_train_config("recipes/cpu-lora.yaml", ["beta=0.2"])``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignment.settings import SettingsError, load_yaml, validate_choice, validate_range

# TRL 1.16 DPOTrainer._compute_loss knows exactly these names.
LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)
LR_SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt",
    "cosine_with_min_lr", "warmup_stable_decay",
)
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
TRUNCATION_MODES = ("keep_start", "keep_end")
# Only the sum of completion log-probs is affected by these, so they must never be LoRA targets (TRL refuses).
_FORBIDDEN_TARGETS = ("lm_head",)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); elsewhere torch emulates it slowly."""
    try:
        import torch

        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (ImportError, AttributeError, RuntimeError):  # private torch helpers: absent means "assume not"
        return False


@dataclass
class TrainConfig:
    """Everything one DPO run needs. Field names are the recipe keys."""

    model: str = field(
        default="bundled",
        metadata={"help": "Base model: 'bundled' (SmolLM2-135M-Instruct), a local folder, a .gguf file or a Hub id."},
    )
    dataset: str = field(
        default="",
        metadata={"help": "Preference data: a .jsonl or .parquet file with prompt/chosen/rejected, or a Hub dataset "
                  "id (owner/name, reached only when you name one)."},
    )
    run_name: str = field(default="dpo-run", metadata={"help": "Name of the run; also the default output folder."})
    output_dir: str = field(
        default="", metadata={"help": "Where checkpoints, adapter and metrics go. Empty: runs/<run_name>."}
    )
    device: str = field(
        default="auto",
        metadata={"help": "'auto' (CUDA if present, else CPU; under accelerate, this process's GPU), 'cpu', 'cuda', "
                  "'cuda:N'."},
    )
    beta: float = field(
        default=0.1,
        metadata={"help": "KL penalty strength: higher keeps the model closer to the base (0.05 weak, 0.1 standard, "
                  "0.5 strong)."},
    )
    loss_type: str | list[str] = field(
        default="sigmoid",
        metadata={"help": f"DPO loss (TRL name), or a list of names to combine: {', '.join(LOSS_TYPES)}."},
    )
    loss_weights: list[float] | None = field(
        default=None,
        metadata={"help": "Weight of each loss in loss_type, in the same order (e.g. [1.0, 0.5] for sigmoid + a "
                  "half-weight sft term); unset: every loss weighs 1."},
    )
    learning_rate: float = field(
        default=5e-5,
        metadata={"help": "Peak learning rate. LoRA needs ~1e-5..1e-4; full fine-tuning uses ~5e-7..1e-6."},
    )
    lr_scheduler_type: str = field(
        default="linear", metadata={"help": f"Learning-rate schedule: {', '.join(LR_SCHEDULERS)}."}
    )
    warmup: float = field(
        default=0.1, metadata={"help": "Share of the training steps spent warming up the learning rate (0..1)."}
    )
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the training pairs."})
    max_steps: int = field(
        default=-1, metadata={"help": "Optimizer steps to run; -1 means use num_train_epochs instead."}
    )
    per_device_train_batch_size: int = field(
        default=2, metadata={"help": "Preference pairs per forward pass (each pair is two sequences)."}
    )
    gradient_accumulation_steps: int = field(
        default=1,
        metadata={"help": "Forward passes per optimizer step; effective batch = batch size × this × GPUs."},
    )
    max_length: int | None = field(
        default=512,
        metadata={"help": "Longest prompt+answer in tokens; longer ones are truncated. Biggest memory lever."},
    )
    truncation_mode: str = field(
        default="keep_start",
        metadata={"help": "How TRL truncates: 'keep_start' (supported) or 'keep_end' (deprecated in TRL)."},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank; 0 trains all weights (full fine-tuning)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling (often 2 × rank)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA path (0..1)."})
    lora_target_modules: str | list[str] = field(
        default="all-linear",
        metadata={"help": "Layers that get adapters: 'all-linear' or a list such as [q_proj, v_proj]."},
    )
    lora_layers: int = field(
        default=0,
        metadata={"help": "Adapters only in the last N decoder layers (0 = all). The backward pass then stops at the "
                  "lowest adapted layer: fewer layers, faster steps and less activation memory."},
    )
    init_adapter: str = field(
        default="",
        metadata={"help": "Continue training this LoRA adapter folder (its own rank and layers replace the lora_* "
                  "fields). Empty: start a fresh adapter."},
    )
    init_reference: str = field(
        default="adapter",
        metadata={"help": "With init_adapter, the DPO reference: 'adapter' (the adapter as loaded, TRL's default: "
                  "pairs start at margin 0) or 'base' (the base model, a second copy in memory: pairs the adapter "
                  "already gets right start saturated, so the gradient goes to its mistakes)."},
    )
    precompute_reference: bool = field(
        default=False,
        metadata={"help": "Compute the reference model's log-probs once, before training, instead of in every step: "
                  "saves a forward pass per pair in every epoch after the first."},
    )
    reference_batch_size: int = field(
        default=0,
        metadata={"help": "With precompute_reference: pairs per forward pass of the precompute. 0: 8, or the train "
                  "batch if larger. A no-grad pass, so 8 is cheap, but with a small train batch the precompute "
                  "can be a run's memory peak: lower it when the memory plan says so."},
    )
    cache_frozen_layers: bool = field(
        default=False,
        metadata={"help": "With precompute_reference and lora_layers: keep the output of the layers below the "
                  "adapters, read once during the precompute, and start every training step from it instead of "
                  "recomputing layers that never change (a step of the outcome recipe, 15 of 30 layers adapted, "
                  "took 25% less time on 2 CPU cores). Costs hidden_size floats per token of the pairs in CPU "
                  "memory: about 330 MB for 700 pairs of the bundled model."},
    )
    retain_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the retain loss (0 = off): keeps the adapted layers' hidden states on the "
                  "retain prompts where the base model has them, so the adapter acts where harmful prompts differ "
                  "(circuit-breaker style; docs/OUTCOME.md). Costs two extra forward passes of a small batch per "
                  "step. Needs LoRA and retain_prompts."},
    )
    retain_prompts: str = field(
        default="",
        metadata={"help": ".jsonl of benign prompts for the retain loss (rows with 'prompt'; preference pairs "
                  "work)."},
    )
    retain_label: str = field(
        default="",
        metadata={"help": "Use only retain_prompts rows whose 'label' field equals this (e.g. benign); empty: all."},
    )
    retain_last_tokens: int = field(
        default=0,
        metadata={"help": "Retain loss only on each retain prompt's last N tokens, where the answer's first token "
                  "(refuse or answer) is read from; 0 = every prompt token."},
    )
    retain_batch_size: int = field(
        default=2, metadata={"help": "Retain prompts read per forward pass (per gradient-accumulation step)."}
    )
    load_in_4bit: bool = field(
        default=False, metadata={"help": "Load the base in 4-bit NF4 (QLoRA). Needs a CUDA GPU and bitsandbytes."}
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute activations in the backward pass: much less memory, ~30% slower. Turn on "
                  "when memory is tight (T4)."},
    )
    precision: str = field(
        default="auto",
        metadata={"help": "'auto' (fp32 on CPU, bf16 on GPUs that have it, fp16 on T4), 'fp32', 'fp16' (GPU "
                  "only), 'bf16' (GPUs, and CPUs with native bf16: AVX512-BF16 or AMX)."},
    )
    seed: int = field(default=42, metadata={"help": "Random seed for the data split, LoRA init and shuffling."})
    eval_split: float = field(
        default=0.1, metadata={"help": "Share of pairs held out to measure reward accuracy (0 = no eval)."}
    )
    eval_steps: int = field(
        default=0, metadata={"help": "Evaluate every N optimizer steps; 0 evaluates once at the end."}
    )
    save_steps: int = field(
        default=50, metadata={"help": "Save a resumable checkpoint every N optimizer steps."}
    )
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept on disk (older ones deleted)."})
    logging_steps: int = field(default=1, metadata={"help": "Log metrics every N optimizer steps."})
    merge_after: bool = field(
        default=False,
        metadata={"help": "Also write full merged weights to output_dir/merged (base + adapter; not with 4-bit)."},
    )
    refusal_gate: bool = field(
        default=False,
        metadata={"help": "After training, fit a refusal gate into the adapter folder: a probe on the base model's "
                          "hidden state, fitted on the built-in harmful and benign prompts, sends only prompts it "
                          "flags as harmful to the adapter and leaves the rest to the base model (fewer false "
                          "refusals; docs/OUTCOME.md). Needs LoRA and 16-bit or 32-bit weights; two or three "
                          "minutes on a CPU."},
    )

    def __post_init__(self) -> None:
        if not str(self.model).strip():
            raise SettingsError("model is empty: give 'bundled', a model folder, a .gguf file or a Hub id.")
        self.run_name = str(self.run_name).strip()
        if not self.run_name or any(ch in self.run_name for ch in "/\\") or self.run_name in (".", ".."):
            raise SettingsError(f"run_name {self.run_name!r} must be a plain name without slashes, e.g. 'dpo-run'.")
        if not self.output_dir:
            self.output_dir = str(Path("runs") / self.run_name)
        if not (self.device in ("auto", "cpu", "cuda") or str(self.device).startswith("cuda:")):
            raise SettingsError(f"device {self.device!r} is not one of auto, cpu, cuda, cuda:N.")
        validate_range("beta", self.beta, 0, None, low_inclusive=False)
        losses = [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type or [])
        if not losses:
            raise SettingsError(f"loss_type is empty; use one of: {', '.join(LOSS_TYPES)}.")
        for name in losses:
            validate_choice("loss_type", name, LOSS_TYPES)
        if self.loss_weights is not None:
            weights = list(self.loss_weights) if isinstance(self.loss_weights, (list, tuple)) else [self.loss_weights]
            if len(weights) != len(losses):
                raise SettingsError(f"loss_weights has {len(weights)} values for {len(losses)} losses in loss_type "
                                    f"({', '.join(losses)}); give one weight per loss, in the same order.")
            for weight in weights:
                if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                    raise SettingsError(f"loss_weights contains {weight!r}; every weight must be a number >= 0.")
                validate_range("loss_weights", weight, 0, None)
            self.loss_weights = [float(w) for w in weights]
        if "exo_pair" in losses:
            raise SettingsError("loss_type exo_pair needs label smoothing, which this project does not expose; "
                                "use sigmoid, ipo or robust.")
        validate_range("learning_rate", self.learning_rate, 0, 1, low_inclusive=False)
        validate_choice("lr_scheduler_type", self.lr_scheduler_type, LR_SCHEDULERS)
        validate_range("warmup", self.warmup, 0, 1, high_inclusive=False)
        validate_range("num_train_epochs", self.num_train_epochs, 0, None, low_inclusive=False)
        if self.max_steps == 0 or self.max_steps < -1:
            raise SettingsError(f"max_steps is {self.max_steps}; use a positive number, or -1 to train by epochs.")
        validate_range("per_device_train_batch_size", self.per_device_train_batch_size, 1)
        validate_range("gradient_accumulation_steps", self.gradient_accumulation_steps, 1)
        validate_range("reference_batch_size", self.reference_batch_size, 0)
        if self.max_length is not None:
            validate_range("max_length", self.max_length, 16)
        validate_choice("truncation_mode", self.truncation_mode, TRUNCATION_MODES)
        validate_range("lora_r", self.lora_r, 0)
        validate_range("lora_layers", self.lora_layers, 0)
        if self.lora_layers and self.lora_r == 0:
            raise SettingsError("lora_layers limits where LoRA adapters go; with lora_r 0 (full fine-tuning) set "
                                "lora_layers: 0.")
        if self.cache_frozen_layers and not (self.precompute_reference and self.lora_layers):
            raise SettingsError("cache_frozen_layers keeps the output of the layers below the adapters, read during "
                                "the reference precompute: it needs precompute_reference: true and lora_layers "
                                "above 0. Set both, or cache_frozen_layers: false.")
        if self.lora_r > 0:
            validate_range("lora_alpha", self.lora_alpha, 1)
        validate_range("lora_dropout", self.lora_dropout, 0, 1, high_inclusive=False)
        targets = self.target_modules()
        if not targets:
            raise SettingsError("lora_target_modules is empty; use 'all-linear' or a list like [q_proj, v_proj].")
        if any(t in _FORBIDDEN_TARGETS for t in targets):
            raise SettingsError("lora_target_modules must not include lm_head: TRL computes log-probs from the "
                                "frozen head. Remove it.")
        validate_choice("init_reference", self.init_reference, ("adapter", "base"))
        if self.init_adapter and self.lora_r == 0:
            raise SettingsError("init_adapter continues a LoRA adapter; with lora_r 0 (full fine-tuning) leave "
                                "init_adapter empty.")
        validate_range("retain_weight", self.retain_weight, 0, None)
        validate_range("retain_batch_size", self.retain_batch_size, 1)
        validate_range("retain_last_tokens", self.retain_last_tokens, 0)
        if self.retain_weight > 0 and self.lora_r == 0:
            raise SettingsError("retain_weight compares the model with and without its adapter, so it needs LoRA: "
                                "set lora_r > 0 or retain_weight: 0.")
        if self.retain_weight > 0 and not str(self.retain_prompts).strip():
            raise SettingsError("retain_weight > 0 needs retain_prompts: a .jsonl of benign prompts (rows with a "
                                "'prompt' field; preference pairs with a 'label' work with retain_label: benign).")
        if self.load_in_4bit and self.lora_r == 0:
            raise SettingsError("load_in_4bit needs LoRA (4-bit weights cannot be trained): set lora_r > 0.")
        if self.load_in_4bit and self.device == "cpu":
            raise SettingsError("load_in_4bit needs a CUDA GPU; on CPU set load_in_4bit: false.")
        if self.refusal_gate and self.lora_r == 0:
            raise SettingsError("refusal_gate routes prompts between the base model and its adapter, so it needs "
                                "LoRA: set lora_r > 0 or refusal_gate: false.")
        if self.refusal_gate and self.merge_after:
            raise SettingsError("merge_after bakes the adapter into the weights, leaving no base model for the "
                                "refusal gate to route to: turn one of merge_after and refusal_gate off.")
        if self.refusal_gate and self.load_in_4bit:
            raise SettingsError("refusal_gate reads the base model's 16-bit hidden states, which 4-bit weights move "
                                "(the gate then misroutes, docs/OUTCOME.md): set load_in_4bit: false, or "
                                "refusal_gate: false.")
        if self.merge_after and self.load_in_4bit:
            raise SettingsError("merge_after cannot merge into 4-bit weights; set merge_after: false, or merge later "
                                "from a full-precision base.")
        validate_choice("precision", self.precision, PRECISIONS)
        if self.precision == "fp16" and self.device == "cpu":
            raise SettingsError("precision fp16 is for GPUs; on CPU use precision: fp32, auto, or bf16 on a CPU "
                                "with native bf16 (AVX512-BF16 or AMX).")
        if self.precision == "bf16" and self.device == "cpu" and not cpu_has_native_bf16():
            raise SettingsError("precision bf16 on this CPU would be emulated and slow: it has no native bf16 "
                                "(AVX512-BF16 or AMX). Use precision: fp32 or auto.")
        validate_range("eval_split", self.eval_split, 0, 0.5)
        validate_range("eval_steps", self.eval_steps, 0)
        validate_range("save_steps", self.save_steps, 1)
        validate_range("save_total_limit", self.save_total_limit, 1)
        validate_range("logging_steps", self.logging_steps, 1)

    # --- derived values -------------------------------------------------------------------------------------

    def loss_types(self) -> list[str]:
        return [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)

    def target_modules(self) -> str | list[str]:
        """'all-linear' stays a string (peft's shortcut); anything else becomes a list of module names."""
        value = self.lora_target_modules
        if isinstance(value, str):
            if value.strip() == "all-linear":
                return "all-linear"
            return [part.strip() for part in value.split(",") if part.strip()]
        return [str(part) for part in value]

    @property
    def effective_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * _world_size()

    @property
    def precompute_batch_size(self) -> int:
        """Pairs per forward pass of the reference precompute: reference_batch_size, or by default 8 (a no-grad
        pass, so batches of 8 cost little) or the train batch if larger."""
        return self.reference_batch_size or max(8, self.per_device_train_batch_size)

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.output_dir) / "checkpoints"

    @property
    def adapter_dir(self) -> Path:
        return Path(self.output_dir) / "adapter"

    def resolved_device(self) -> str:
        """The device this process trains on. Under accelerate/torchrun each rank takes its own local GPU."""
        import torch

        if self.device != "auto":
            return self.device
        if not torch.cuda.is_available():
            return "cpu"
        local_rank = os.environ.get("LOCAL_RANK")
        return f"cuda:{int(local_rank)}" if local_rank is not None else "cuda"

    def resolved_precision(self, device: str | None = None) -> str:
        import torch

        device = device or self.resolved_device()
        if self.precision != "auto":
            return self.precision
        if not device.startswith("cuda"):
            # fp32 stays the CPU default (the memory planner is calibrated on it); bf16 is opt-in, see help.
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"

    def model_dtype(self, device: str | None = None) -> str:
        """dtype name for alignment.models.LoadSettings: weights in the training precision."""
        return {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[self.resolved_precision(device)]

    def peft_config(self, num_layers: int | None = None, linear_names: Iterable[str] = ()) -> Any:
        """peft.LoraConfig for this run, or None for full fine-tuning (lora_r 0).

        When ``lora_layers`` limits the adapted layers, pass the model's decoder layer count and the names of its
        linear layers (peft cannot combine 'all-linear' with a layer list, so it gets the names instead).
        """
        if self.lora_r == 0:
            return None
        from peft import LoraConfig

        targets = self.target_modules()
        layers: dict[str, Any] = {}
        if self.lora_layers and num_layers and self.lora_layers < num_layers:
            layers = {"layers_to_transform": list(range(num_layers - self.lora_layers, num_layers))}
            if targets == "all-linear":
                targets = sorted(set(linear_names))
                if not targets:
                    raise SettingsError("lora_layers with all-linear targets needs the model's linear layer names.")
        return LoraConfig(
            **layers,
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=targets,
            bias="none",
            task_type="CAUSAL_LM",
        )

    def to_dpo_config(self, device: str | None = None) -> Any:
        """Build trl.DPOConfig. Precision flags are always explicit: TRL would otherwise default to bf16."""
        from trl import DPOConfig

        device = device or self.resolved_device()
        precision = self.resolved_precision(device)
        has_eval = self.eval_split > 0
        return DPOConfig(
            output_dir=str(self.checkpoint_dir),
            run_name=self.run_name,
            beta=self.beta,
            loss_type=self.loss_types(),
            loss_weights=self.loss_weights,
            learning_rate=self.learning_rate,
            lr_scheduler_type=self.lr_scheduler_type,
            warmup_steps=self.warmup,  # TRL/transformers read values below 1 as a ratio of the total steps
            num_train_epochs=self.num_train_epochs,
            max_steps=self.max_steps,
            per_device_train_batch_size=self.per_device_train_batch_size,
            per_device_eval_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            max_length=self.max_length,
            truncation_mode=self.truncation_mode,
            gradient_checkpointing=self.gradient_checkpointing,
            fp16=precision == "fp16",
            bf16=precision == "bf16",
            use_cpu=not device.startswith("cuda"),
            seed=self.seed,
            data_seed=self.seed,
            eval_strategy="steps" if has_eval and self.eval_steps > 0 else "no",
            eval_steps=self.eval_steps if has_eval and self.eval_steps > 0 else None,
            save_strategy="steps",
            save_steps=self.save_steps,
            save_total_limit=self.save_total_limit,
            logging_steps=self.logging_steps,
            logging_first_step=True,
            precompute_ref_log_probs=self.precompute_reference,
            precompute_ref_batch_size=self.precompute_batch_size,
            # The Trainer would hide a NaN/inf step loss behind the running mean; we want to see it and stop.
            logging_nan_inf_filter=False,
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
            # The dataset is small and already in memory; extra processes only cost start-up time.
            dataset_num_proc=None,
        )


def _world_size() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def load_train_config(path: str | Path, overrides: Iterable[str] = ()) -> TrainConfig:
    """Load a recipe YAML and apply ``key=value`` overrides."""
    return load_yaml(TrainConfig, path, overrides)
