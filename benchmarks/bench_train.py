"""DPO on CPU: the cpu-lora recipe vs TRL's DPOTrainer with the seed's starting configuration.

Both train the bundled SmolLM2-135M-Instruct on the same pairs (benchmarks/data/safety_prefs.jsonl, 50
safety/helpfulness pairs written for this benchmark) with the same held-out split, each in a fresh process so
peak RSS is its own. Reported per run: seconds per preference pair, peak RSS, held-out reward accuracy and
margin, and achieved training FLOP/s as a share of a float32 matmul rate measured in the same process.

Baseline = the seed's DPOConfig: full fine-tuning, beta 0.1, batch 2, gradient accumulation 8, lr 5e-7,
1 epoch, warmup 0.1, TRL defaults otherwise (so gradient checkpointing stays on, as TRL turns it on). The seed's
fp16=True is impossible on CPU (no fp16 training there): both runs use fp32. Checkpoint saving is off for both
(the seed's save_strategy="epoch" would time a 0.5 GB write, not training).

Run: ``ALIGN_CACHE_DIR=/tmp/aligncache python benchmarks/bench_train.py [--quick]`` (full ~10 min on 2 cores;
--quick uses 24 pairs and one epoch of cpu-lora).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data" / "safety_prefs.jsonl"
RECIPE = ROOT / "recipes" / "cpu-lora.yaml"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def matmul_flops(seconds: float = 3.0) -> tuple[float, float]:
    """float32 matmul rate of this process (same threads as training): (FLOP per wall second, per CPU second)."""
    import torch

    a, b = torch.randn(1024, 576), torch.randn(576, 1536)
    for _ in range(3):
        a @ b
    n, start, cpu = 0, time.perf_counter(), cpu_seconds()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    flops = 2 * 1024 * 576 * 1536 * n
    return flops / (time.perf_counter() - start), flops / (cpu_seconds() - cpu)


def useful_flops(params: int, tokens: int, full_finetune: bool, backward_share: float = 1.0,
                 reference_share: float = 1.0) -> float:
    """FLOPs of the work done, per token: policy forward 2P; backward 4P full (weights and inputs), ~2P LoRA
    (inputs only) times the share of layers it goes through; reference forward 2P, or 2P/epochs when it is
    precomputed once. Recomputation under gradient checkpointing is overhead, not useful work: not counted."""
    if full_finetune:
        return tokens * params * 8
    return tokens * params * (2 + 2 * backward_share + 2 * reference_share)


def count_tokens(rows: list[dict], tokenizer, max_length: int | None) -> int:
    total = 0
    for row in rows:
        for key in ("chosen", "rejected"):
            n = len(tokenizer.apply_chat_template(row["prompt"] + row[key], tokenize=True)["input_ids"])
            total += min(n, max_length) if max_length else n
    return total


def child(mode: str, args: dict) -> dict:
    import torch

    from alignment.train import load_preference_rows, split_rows, train
    from alignment.train_config import TrainConfig, load_train_config

    torch.manual_seed(0)
    config: TrainConfig = load_train_config(RECIPE, [f"dataset={DATA}", f"output_dir={args['out']}/{mode}",
                                                     "eval_split=0.2", "save_steps=100000"]
                                            + (["num_train_epochs=1"] if args["quick"] else [])
                                            + list(args["set"]))
    precision = config.resolved_precision("cpu")
    rows = load_preference_rows(config.dataset)
    if args["quick"]:
        rows = rows[:30]
    train_set, eval_set = split_rows(rows, config)
    flops_peak = matmul_flops()
    if mode == "ours":
        if args["quick"]:
            config.dataset = str(Path(args["out"]) / "quick.jsonl")
            Path(config.dataset).write_text("".join(json.dumps(r) + "\n" for r in rows))
        logs: list[dict] = []
        marks: dict[str, float] = {}

        # Timed from the trainer's construction (tokenising, and precomputed reference log-probs when asked) to
        # the end of training, as the baseline is.
        def on_status(phase: str) -> None:
            if phase.startswith("preparing"):
                marks["start"], marks["wall_start"] = cpu_seconds(), time.perf_counter()

        def on_log(record: dict) -> None:
            logs.append(record)
            if "train_runtime" in record:
                marks["end"], marks["wall_end"] = cpu_seconds(), time.perf_counter()

        result = train(config, on_log=on_log, on_status=on_status, resume=False)
        cpu_train = marks["end"] - marks["start"]
        runtime = marks["wall_end"] - marks["wall_start"]
        eval_acc = result.eval_metrics.get("eval_rewards/accuracies")
        eval_margin = result.eval_metrics.get("eval_rewards/margins")
        epochs, max_length, full = config.num_train_epochs, config.max_length, False
        from transformers import AutoConfig, AutoTokenizer

        from alignment.memory import shape_of
        from alignment.models import resolve_source

        folder = resolve_source("bundled")[0]
        tokenizer = AutoTokenizer.from_pretrained(folder)
        shape = shape_of(AutoConfig.from_pretrained(folder))
        params = shape.total_params
        shares = {"backward_share": min(config.lora_layers, shape.num_layers) / shape.num_layers
                  if config.lora_layers else 1.0,
                  "reference_share": 1 / epochs if config.precompute_reference else 1.0}
    else:
        from trl import DPOConfig, DPOTrainer

        from alignment.models import LoadSettings, load_model

        # The same weights through the project's loader (the bundled GGUF de-quantised once into safetensors).
        loaded = load_model(LoadSettings(model="bundled", device="cpu",
                                         dtype="bfloat16" if precision == "bf16" else "float32"))
        model, tokenizer = loaded.model.train(), loaded.tokenizer
        params = sum(p.numel() for p in model.parameters())
        seed = DPOConfig(output_dir=f"{args['out']}/baseline", beta=0.1, per_device_train_batch_size=2,
                         gradient_accumulation_steps=8, num_train_epochs=1, learning_rate=5e-7, warmup_steps=0.1,
                         fp16=False, bf16=precision == "bf16", use_cpu=True, logging_steps=10, save_strategy="no",
                         report_to="none", disable_tqdm=True, seed=config.seed)
        start, wall_start = cpu_seconds(), time.perf_counter()
        trainer = DPOTrainer(model=model, args=seed, train_dataset=train_set, eval_dataset=eval_set,
                             processing_class=tokenizer)
        trainer.train()
        cpu_train, runtime = cpu_seconds() - start, time.perf_counter() - wall_start
        metrics = trainer.evaluate()
        eval_acc, eval_margin = metrics.get("eval_rewards/accuracies"), metrics.get("eval_rewards/margins")
        epochs, max_length, full, shares = 1, seed.max_length, True, {}
    tokens = count_tokens(list(train_set), tokenizer, max_length) * epochs
    pairs = int(len(train_set) * epochs)
    return {
        "mode": mode, "precision": precision, "pairs": pairs, "train_seconds": runtime, "seconds_per_pair": runtime / pairs,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "eval_accuracy": eval_acc, "eval_margin": eval_margin, "eval_pairs": len(eval_set),
        "cpu_seconds": cpu_train, "cpu_seconds_per_pair": cpu_train / pairs,
        "flops_per_second": useful_flops(params, tokens, full, **shares) / runtime, "matmul_flops_per_second": flops_peak[0],
        "flops_per_cpu_second": useful_flops(params, tokens, full, **shares) / cpu_train,
        "matmul_flops_per_cpu_second": flops_peak[1],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 pairs and one epoch: a smoke run.")
    parser.add_argument("--set", action="append", default=[], help="Override a cpu-lora recipe field (key=value), "
                        "e.g. --set lora_layers=15. The precision applies to both runs.")
    parser.add_argument("--child", choices=("baseline", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, {"quick": args.quick, "out": args.out, "set": args.set})),
              flush=True)
        return 0

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        # One run after the other, so neither slows the other: wall and CPU seconds per pair are both fair.
        for mode in ("baseline", "ours"):
            proc = subprocess.Popen([sys.executable, __file__, "--child", mode, "--out", tmp]
                                    + (["--quick"] if args.quick else [])
                                    + [f"--set={item}" for item in args.set], env=env, cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            stdout, stderr = proc.communicate()
            line = next((ln for ln in stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"{mode} run failed:\n{stderr[-3000:]}", file=sys.stderr)
                return 1
            results[mode] = json.loads(line[7:])
            r = results[mode]
            name = "TRL seed config (full FT)" if mode == "baseline" else "cpu-lora recipe"
            print(f"{name:<27} {r['pairs']:>3} pairs: {r['cpu_seconds_per_pair']:.2f} CPU-s/pair "
                  f"({r['seconds_per_pair']:.2f} wall-s/pair)  peak RSS {r['peak_rss'] / 2**30:.2f} GiB  "
                  f"held-out reward accuracy {r['eval_accuracy']:.2f} (margin {r['eval_margin']:.3f}, "
                  f"{r['eval_pairs']} pairs)  {r['flops_per_cpu_second'] / 1e9:.1f} GFLOP per CPU-s = "
                  f"{r['flops_per_cpu_second'] / r['matmul_flops_per_cpu_second']:.0%} of fp32 matmul "
                  f"({r['matmul_flops_per_cpu_second'] / 1e9:.1f})", flush=True)
    base, ours = results["baseline"], results["ours"]
    speedup = base["cpu_seconds_per_pair"] / ours["cpu_seconds_per_pair"]
    wall = base["seconds_per_pair"] / ours["seconds_per_pair"]
    print(f"speed-up per pair {speedup:.2f}x in CPU time, {wall:.2f}x in wall time (target >= 2x); peak RSS ratio {ours['peak_rss'] / base['peak_rss']:.2f}; "
          f"held-out accuracy {ours['eval_accuracy']:.2f} vs {base['eval_accuracy']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
