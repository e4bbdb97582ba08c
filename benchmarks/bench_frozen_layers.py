"""Two CPU training levers, each against its own baseline in the same process: the length-sorted reference
precompute (alignment/reference_logps.py) against TRL's, and training steps started above the frozen layers
(alignment/frozen_layers.py, ``cache_frozen_layers``) against steps that run every layer.

The bundled SmolLM2-135M-Instruct with the cpu-lora recipe's adapters (LoRA in the top 15 of 30 layers) on
benchmarks/data/safety_prefs.jsonl, or on any pairs file given with --pairs (the outcome recipe's
runs/refusal-bundled-cpu/data/pairs.jsonl is the case the levers were made for). The precompute is timed once
each, the training steps twice each, alternating, keeping each one's faster round; it also prints how far the
results differ, which should be float rounding only.

Run: ``python benchmarks/bench_frozen_layers.py [--pairs F.jsonl] [--limit 96] [--steps 6]`` (about 3 minutes on 2
cores with the defaults).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RECIPE = ROOT / "recipes" / "cpu-lora.yaml"
DATA = ROOT / "benchmarks" / "data" / "safety_prefs.jsonl"


def build(trainer_class: type, rows: list[dict], out: str, steps: int, record: bool) -> tuple[object, object, float]:
    """A DPO trainer of the recipe on ``rows``; returns it, its frozen-layer cache (when ``record``), and the
    seconds its construction took (tokenising and the reference precompute)."""
    import transformers
    from datasets import Dataset

    from alignment import completion_logprobs
    from alignment.frozen_layers import FrozenLayerCache
    from alignment.models import LoadSettings, load_model
    from alignment.train import linear_layer_names
    from alignment.train_config import load_train_config

    transformers.logging.set_verbosity_error()
    completion_logprobs.enable()
    config = load_train_config(RECIPE, [f"output_dir={out}", f"max_steps={steps}", "save_steps=100000",
                                        "eval_split=0.0", "logging_steps=1"])
    loaded = load_model(LoadSettings(model="bundled", device="cpu", dtype="float32"))
    peft_config = config.peft_config(loaded.model.config.num_hidden_layers, linear_layer_names(loaded.model))
    cache = FrozenLayerCache.for_model(loaded.model, peft_config) if record else None
    started = time.perf_counter()
    with cache.recording() if cache else contextlib.nullcontext():
        trainer = trainer_class(model=loaded.model, args=config.to_dpo_config("cpu"),
                                train_dataset=Dataset.from_list(rows), processing_class=loaded.tokenizer,
                                peft_config=peft_config)
    seconds = time.perf_counter() - started
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)  # the log dicts and bars of every step: only the summary is printed
    trainer.remove_callback(ProgressCallback)
    return trainer, cache, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default=str(DATA), help="Preference pairs (.jsonl) to train on.")
    parser.add_argument("--limit", type=int, default=96, help="Use the first N pairs.")
    parser.add_argument("--steps", type=int, default=6, help="Training steps timed per run.")
    args = parser.parse_args()

    import tempfile

    import torch
    from trl import DPOTrainer

    from alignment.reference_logps import sorted_reference_trainer_class
    from alignment.train import load_preference_rows

    rows = load_preference_rows(args.pairs)[:args.limit]
    sorted_class = sorted_reference_trainer_class(DPOTrainer)
    with tempfile.TemporaryDirectory() as out:
        # 1. The reference precompute: TRL's batches in dataset order vs length-sorted batches.
        # One round each: TRL caches its precompute by the dataset's fingerprint, so a second round of it would
        # time a file read. The lever goes first, so any warm-up the process gains favours the baseline.
        precompute: dict[str, float] = {}
        logps = {}
        for name, cls in (("sorted", sorted_class), ("trl", DPOTrainer)):
            trainer, _, precompute[name] = build(cls, rows, f"{out}/{name}", args.steps, record=False)
            logps[name] = torch.tensor(list(trainer.train_dataset["ref_chosen_logps"])
                                       + list(trainer.train_dataset["ref_rejected_logps"]))
            del trainer
        diff = float((logps["trl"] - logps["sorted"]).abs().max())
        base, ours = precompute["trl"], precompute["sorted"]
        print(f"reference precompute, {len(rows)} pairs: TRL {base:.1f} s, sorted {ours:.1f} s -> "
              f"{base / ours:.2f}x (largest log-prob difference {diff:.2g})")

        # 2. Training steps: every layer vs starting above the frozen ones.
        steps: dict[bool, list[float]] = {False: [], True: []}
        losses: dict[bool, list[float]] = {}
        for _ in range(2):
            for cached in (False, True):
                trainer, cache, _ = build(sorted_class, rows, f"{out}/train-{cached}", args.steps, record=cached)
                started = time.perf_counter()
                with cache.serving() if cache else contextlib.nullcontext():
                    trainer.train()
                steps[cached].append((time.perf_counter() - started) / args.steps)
                losses[cached] = [r["loss"] for r in trainer.state.log_history if "loss" in r]
                if cache:
                    served = cache.summary()
                del trainer
        diff = max(abs(a - b) for a, b in zip(losses[False], losses[True], strict=True))
        base, ours = min(steps[False]), min(steps[True])
        print(f"training step (batch 4 x 2): every layer {base:.2f} s, above the {served['layers']} frozen layers "
              f"{ours:.2f} s -> {base / ours:.2f}x ({served['cached_passes']} of "
              f"{served['cached_passes'] + served['full_passes']} forward passes from the cache; largest loss "
              f"difference {diff:.2g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
