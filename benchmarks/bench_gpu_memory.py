"""Check the memory planner on a GPU: the t4-qlora recipe on 1.5B-class models, against a T4-sized budget.

Models are built from their config with random weights (nothing is downloaded): SmolLM2-1.7B, the recipe's
model, and Qwen2.5-1.5B, whose 152k-token vocabulary stresses the log-prob head (TRL tiles it). Each run
trains a few DPO steps with ``alignment.train.train`` and recipes/t4-qlora.yaml (4-bit NF4 weights, fp16 compute
as on a T4, batch 2, max_length 1024, gradient checkpointing), and with variations of it: no gradient
checkpointing at max_length 512, and 16-bit bf16 weights (a Space's GPU) at max_length 512. Every answer fills
max_length, so the planner's assumption holds. Each run is a fresh process whose caching allocator is capped so
that CUDA context + allocator stay within the budget; the planner's verdict is reported, not enforced.

The measured peak is the process's device footprint: the CUDA context (device memory in use after start-up,
minus what the allocator holds) plus the allocator's peak reserved memory. Prints the planner's estimate, the
measured peak and their ratio (target: within 25%), and whether each run fitted the budget; then loads each
trained adapter onto its 4-bit fp16 base the way the app does and greedily answers one prompt.

Run (needs a CUDA GPU and bitsandbytes): ``python benchmarks/bench_gpu_memory.py [--budget 15GB] [--steps 2]
[--tokenizer DIR] [--json FILE]`` (a few minutes on one GPU). Without ``--tokenizer`` the bundled model's
tokenizer is used (its token ids are valid for both shapes).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench_memory import write_long_pairs  # benchmarks/ is on sys.path when a benchmark runs as a script
from child_process import run_child

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the project's packages are importable
TARGET = 0.25

# Published architecture numbers; the weights are random: memory depends on the shape alone.
SHAPES = {
    "smollm2-1.7b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                         num_attention_heads=32, num_key_value_heads=32, vocab_size=49152,
                         tie_word_embeddings=True, max_position_embeddings=8192, rope_theta=130000.0),
    "qwen2.5-1.5b": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                         tie_word_embeddings=True, max_position_embeddings=32768, rope_theta=1000000.0),
}

# (name, shape, recipe overrides, capped at the budget). Every run is capped: each must fit a T4 as planned.
RUNS = [
    ("smollm2-1.7b", "smollm2-1.7b", [], True),
    ("smollm2-1.7b-no-checkpointing", "smollm2-1.7b", ["gradient_checkpointing=false", "max_length=512"], True),
    ("smollm2-1.7b-bf16-16bit", "smollm2-1.7b", ["load_in_4bit=false", "precision=bf16", "max_length=512"], True),
    ("qwen2.5-1.5b", "qwen2.5-1.5b", [], True),
    ("qwen2.5-1.5b-no-checkpointing", "qwen2.5-1.5b", ["gradient_checkpointing=false", "max_length=512"], True),
]

CHILD = r"""
import json, sys, torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
args = json.loads(sys.argv[1])
folder = args["folder"]
# Build the random-weight model on the GPU in fp16 (fast) unless an earlier run did, and start measuring from a
# clean allocator.
tokenizer = AutoTokenizer.from_pretrained(args["tokenizer"])
shape = dict(args["shape"])
config = AutoConfig.for_model(shape.pop("model_type"), **shape, bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
with torch.device("meta"):
    params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
if not __import__("os").path.isdir(folder):
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
torch.cuda.empty_cache()
torch.cuda.reset_peak_memory_stats()
free, total = torch.cuda.mem_get_info()
context = (total - free) - torch.cuda.memory_reserved()
budget = args["budget"]
if args["cap"]:
    torch.cuda.set_per_process_memory_fraction((budget - context) / total)

from alignment.train import TrainingError, train
from alignment.train_config import load_train_config
config = load_train_config(args["recipe"], [f"model={folder}", f"dataset={args['data']}",
                           f"output_dir={args['output']}", f"max_steps={args['steps']}", "save_steps=1000",
                           "eval_split=0.0", "logging_steps=1", *args["overrides"]])
result = {"params": params, "context": context, "total": total}
try:
    # force: the planner's verdict is reported, not enforced, so that it can be checked.
    outcome = train(config, memory_budget=budget, force=True)
    result.update(state=outcome.state, steps=outcome.global_step, plan=outcome.memory_plan,
                  loss=outcome.metrics.get("loss"), seconds=outcome.elapsed_seconds, adapter=outcome.adapter_dir)
except (TrainingError, torch.cuda.OutOfMemoryError) as exc:
    result.update(state="failed", error=str(exc)[:400])
result.update(reserved=torch.cuda.max_memory_reserved(), allocated=torch.cuda.max_memory_allocated())

if result.get("adapter"):
    # The app's inference path on a T4: 4-bit NF4 base in fp16, the trained adapter on top, greedy decoding.
    from alignment.generation import SamplingSettings, generate
    from alignment.models import LoadSettings
    from alignment.registry import ModelRegistry
    registry = ModelRegistry(LoadSettings(model=folder, device="cuda", dtype="float16", load_in_4bit=True))
    registry.load_adapter(result["adapter"])
    answer = generate(registry.loaded, [[{"role": "user", "content": "Say hello."}]],
                      SamplingSettings(max_new_tokens=8, do_sample=False))[0][0]
    result.update(generated_tokens=answer.tokens, inference_4bit=registry.loaded.quantized_4bit,
                  inference_dtype=registry.loaded.dtype)
print("RESULT " + json.dumps(result))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="15GB", help="Device memory to plan for and cap at (a T4: 15GB).")
    parser.add_argument("--steps", type=int, default=2, help="Training steps per run.")
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "t4-qlora.yaml"))
    parser.add_argument("--tokenizer", default=None, help="Tokenizer folder (default: the bundled model's).")
    parser.add_argument("--json", default=None, help="Also write the results to this JSON file.")
    args = parser.parse_args()

    import torch

    from alignment.memory import format_size, parse_size

    if not torch.cuda.is_available():
        print("error: this benchmark needs a CUDA GPU; plan for a T4 from a CPU with "
              "python -m alignment.memory --config recipes/t4-qlora.yaml --memory-budget 15GB --device cuda",
              file=sys.stderr)
        return 2
    tokenizer = args.tokenizer
    if tokenizer is None:
        from alignment.models import resolve_source

        tokenizer = resolve_source("bundled")[0]
    budget = parse_size(args.budget)
    print(f"GPU: {torch.cuda.get_device_name(0)}; budget {format_size(budget)}; recipe {args.recipe}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "long.jsonl"
        # One optimizer step takes batch x accumulation pairs (16 in the recipe): enough for every step.
        # 80 sentences: answers alone exceed 1024 tokens, so every sequence is cut at max_length.
        write_long_pairs(data, n=16 * args.steps, repeats=80)
        for name, shape, overrides, cap in RUNS:
            child = {"shape": SHAPES[shape], "folder": f"{tmp}/{shape}", "tokenizer": tokenizer, "budget": budget,
                     "recipe": args.recipe, "data": str(data), "output": f"{tmp}/{name}-run", "steps": args.steps,
                     "overrides": overrides, "cap": cap}
            result = run_child(CHILD, json.dumps(child))
            if result is None:
                print(f"error: {name}: the child printed no result", file=sys.stderr)
                return 1
            results[name] = result
            print(f"{name}: {result['params'] / 1e9:.2f}B parameters, {' '.join(overrides) or 'the recipe'}, "
                  f"{'capped at the budget' if cap else 'no cap'}: run {result['state']}"
                  + (f" ({result.get('error')})" if result["state"] == "failed" else
                     f" ({result['steps']} steps in {result['seconds']:.0f} s, loss {result['loss']})"), flush=True)
            peak = result["context"] + result["reserved"]
            print(f"  measured: context {format_size(result['context'])} + allocator peak reserved "
                  f"{format_size(result['reserved'])} (allocated {format_size(result['allocated'])}) = "
                  f"{format_size(peak)}: {'within' if peak <= budget else 'OVER'} the budget", flush=True)
            plan = result.get("plan")
            if plan:
                ratio = plan["total_bytes"] / peak
                result["ratio"] = ratio
                print(f"  planner estimate {format_size(plan['total_bytes'])} (fits: {plan['fits']}); "
                      f"estimate/measured {ratio:.2f}", flush=True)
                print("  parts: " + ", ".join(f"{k} {format_size(v)}" for k, v in plan["parts"].items()), flush=True)
            if "generated_tokens" in result:
                print(f"  inference: adapter on the {'4-bit' if result['inference_4bit'] else 'full'} "
                      f"{result['inference_dtype']} base answered with {result['generated_tokens']} tokens", flush=True)
    ratios = [r["ratio"] for r in results.values() if "ratio" in r]
    if ratios:
        worst = max(abs(r - 1) for r in ratios)
        print(f"worst relative error {worst:.0%} (target <= {TARGET:.0%})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if ratios else 1


if __name__ == "__main__":
    raise SystemExit(main())
