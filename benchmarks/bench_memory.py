"""Check the memory planner against real peaks: estimate vs measured peak RSS for six CPU configurations.

Each configuration trains the bundled model for a few steps with ``alignment.train.train`` in a fresh Python
process; the child reports ``ru_maxrss`` minus its RSS after imports (the torch/transformers runtime is not
part of the estimate). Answers are long enough that every sequence reaches max_length, so the planner's
max_length assumption holds. Prints estimate, measured and their ratio (target: within 25%).

Run: ``ALIGN_CACHE_DIR=/tmp/aligncache python benchmarks/bench_memory.py [--steps 2] [--only NAME]`` (about 25 minutes on
2 cores, most of it the reference precompute over the last two configurations' 500 pairs).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from child_process import run_child  # benchmarks/ is on sys.path when a benchmark runs as a script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the project's packages are importable
CONFIGS = [
    {"name": "batch1-len128", "per_device_train_batch_size": 1, "max_length": 128, "gradient_checkpointing": False},
    {"name": "batch4-len256", "per_device_train_batch_size": 4, "max_length": 256, "gradient_checkpointing": False},
    {"name": "batch4-len256-ckpt", "per_device_train_batch_size": 4, "max_length": 256,
     "gradient_checkpointing": True},
    # The cpu-lora recipe's speed settings: adapters in the top 15 layers, reference log-probs precomputed.
    {"name": "batch4-len256-top15", "per_device_train_batch_size": 4, "max_length": 256,
     "gradient_checkpointing": False, "lora_layers": 15, "precompute_reference": True},
    # cache_frozen_layers on 500 pairs: the cache (one hidden state per token of every sequence, ~0.55 GiB here) is
    # a fifth of the peak, so leaving it out of the plan would show in the ratio; the same run without it first.
    {"name": "batch1-len256-top15-500pairs", "per_device_train_batch_size": 1, "max_length": 256,
     "gradient_checkpointing": False, "lora_layers": 15, "precompute_reference": True, "pairs": 500},
    {"name": "batch1-len256-cache", "per_device_train_batch_size": 1, "max_length": 256,
     "gradient_checkpointing": False, "lora_layers": 15, "precompute_reference": True, "cache_frozen_layers": True,
     "pairs": 500},
]

CHILD = r"""
import json, resource, sys, psutil
import torch, transformers, trl, peft, datasets  # the runtime, measured before the baseline
from alignment.train import train
from alignment.train_config import TrainConfig
args = json.loads(sys.argv[1])
torch.set_num_threads(2)
base = psutil.Process().memory_info().rss
config = TrainConfig(**args["config"])
train(config, force=True)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
print("RESULT " + json.dumps({"baseline": base, "peak": peak}))
"""


def write_long_pairs(path: Path, n: int = 12, repeats: int = 40) -> None:
    """``n`` pairs whose answers repeat a sentence ``repeats`` times (about 17 tokens each), to fill max_length."""
    sentence = "This sentence is here to make the answer long enough to fill the whole sequence budget. "
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            handle.write(json.dumps({
                "prompt": [{"role": "user", "content": f"Tell me about topic number {i}."}],
                "chosen": [{"role": "assistant", "content": f"Topic {i}: " + sentence * repeats}],
                "rejected": [{"role": "assistant", "content": f"No. Topic {i}? " + sentence * (repeats - 2)}],
            }) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--only", choices=[spec["name"] for spec in CONFIGS], help="measure one configuration")
    args = parser.parse_args()

    from transformers import AutoConfig, AutoTokenizer

    from alignment.memory import estimate, format_size
    from alignment.models import resolve_source
    from alignment.train import load_preference_rows, pair_token_counts
    from alignment.train_config import TrainConfig

    source = resolve_source("bundled")[0]
    model_config, tokenizer = AutoConfig.from_pretrained(source), AutoTokenizer.from_pretrained(source)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in CONFIGS:
            if args.only and spec["name"] != args.only:
                continue
            data = Path(tmp) / f"long-{spec.get('pairs', 12)}.jsonl"
            write_long_pairs(data, n=spec.get("pairs", 12))
            fields = {k: v for k, v in spec.items() if k not in ("name", "pairs")}
            config = dict(model="bundled", dataset=str(data), run_name=spec["name"], output_dir=f"{tmp}/{spec['name']}",
                          device="cpu", max_steps=args.steps, gradient_accumulation_steps=1, eval_split=0.0,
                          save_steps=1000, lora_r=16, lora_alpha=32, lora_dropout=0.0, **fields)
            train_config = TrainConfig(**config)
            _, dataset_tokens = pair_token_counts(load_preference_rows(str(data)), tokenizer, train_config.max_length)
            plan = estimate(model_config, train_config, budget_bytes=10**12, device="cpu",
                            dataset_tokens=dataset_tokens)
            measured = run_child(CHILD, json.dumps({"config": config}))
            if measured is None:
                print(f"error: {spec['name']}: the child printed no result", file=sys.stderr)
                return 1
            delta = measured["peak"] - measured["baseline"]
            rows.append((spec["name"], plan, delta))
            print(f"{spec['name']:<22} estimate {format_size(plan.total_bytes):>10}  measured {format_size(delta):>10}"
                  f"  estimate/measured {plan.total_bytes / delta:.2f}", flush=True)
            print("    parts: " + ", ".join(f"{k} {format_size(v)}" for k, v in plan.parts.items()), flush=True)
    worst = max(abs(plan.total_bytes / delta - 1) for _, plan, delta in rows)
    print(f"worst relative error {worst:.0%} (target <= 25%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
