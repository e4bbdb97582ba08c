"""Check the recipe's aligned model (LoRA adapter + refusal gate) on a CUDA GPU, loaded the way a T4 loads it.

The gate is fitted on the base model's float32 hidden states on a CPU; on Colab's T4 the app loads the same
model in 4-bit NF4 with float16 compute. This loads the bundled model that way on CUDA, attaches the adapter and
its gate, evaluates the same prompts greedily as a CPU report did, and prints, per prompt kind, how often the
gate routed the same way and the judge gave the same verdict, and both sides' rates.

Run (needs a CUDA GPU and bitsandbytes; a few minutes):
    python scripts/gpu_gate_check.py --adapter runs/refusal-bundled-cpu/adapter \
        --cpu-report runs/refusal-bundled-cpu/eval_independent.json [--dtype float16] [--output gpu.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def kind(row: dict) -> str:
    return "harmful" if row["label"] == "harmful" else ("risky" if row.get("risky") else "plain")


def compare(cpu_rows: list[dict], gpu_rows: list[dict]) -> dict[str, dict[str, int]]:
    """Per prompt kind: prompts, same routing, same answer word for word, same refused/answered verdict, and
    routings and refusals on each side."""
    out: dict[str, Counter] = {}
    for cpu, gpu in zip(cpu_rows, gpu_rows, strict=True):
        if cpu["prompt"] != gpu["prompt"]:
            raise SystemExit("error: the CPU report holds other prompts, or in another order; give --prompts the "
                             "file it was made from.")
        counts = out.setdefault(kind(cpu), Counter())
        counts["prompts"] += 1
        counts["same_route"] += cpu["aligned"].get("routed") == gpu["aligned"].get("routed")
        counts["same_verdict"] += cpu["aligned"]["refused"] == gpu["aligned"]["refused"]
        counts["same_answer"] += cpu["aligned"]["response"] == gpu["aligned"]["response"]
        counts["refused_cpu"] += cpu["aligned"]["refused"]
        counts["refused_gpu"] += gpu["aligned"]["refused"]
        counts["routed_cpu"] += bool(cpu["aligned"].get("routed"))
        counts["routed_gpu"] += bool(gpu["aligned"].get("routed"))
    return {name: dict(counts) for name, counts in out.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True, help="Adapter folder with its refusal_gate.json.")
    parser.add_argument("--cpu-report", required=True, help="The same adapter's evaluate report made on a CPU.")
    parser.add_argument("--prompts", default=None, help="JSONL prompts (default: the CPU report's own).")
    parser.add_argument("--dtype", default="float16", help="Compute dtype: float16 as on a T4, or bfloat16.")
    parser.add_argument("--no-4bit", action="store_true", help="Load 16-bit weights instead of 4-bit NF4.")
    parser.add_argument("--output", default=None, help="Also write the GPU report here (.json).")
    parser.add_argument("--limit", type=int, default=None, help="Only the first N prompts (a quick try).")
    parser.add_argument("--device", default="cuda", help="cuda (the check), or cpu to try the script itself.")
    args = parser.parse_args()

    import torch

    from alignment.evaluate import (
        EvalSettings,
        ProgressPrinter,
        attach_adapter,
        evaluate,
        load_cases,
        write_report,
    )
    from alignment.judge import load_judge
    from alignment.models import LoadSettings, load_model

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: this check needs a CUDA GPU.", file=sys.stderr)
        return 2
    cpu = json.loads(Path(args.cpu_report).read_text())
    prompts = args.prompts or cpu["meta"].get("prompts")
    if not prompts or not Path(prompts).is_file():
        print(f"error: no prompts file {prompts!r}; give --prompts the file the CPU report was made from.",
              file=sys.stderr)
        return 2
    cpu_settings = cpu["meta"]["settings"]
    settings = EvalSettings(max_new_tokens=cpu_settings["max_new_tokens"], batch_size=cpu_settings["batch_size"],
                            capability=False)
    loaded = load_model(LoadSettings(model=cpu["meta"].get("model") or "bundled", device=args.device, dtype=args.dtype,
                                     load_in_4bit=not args.no_4bit))
    adapter = attach_adapter(loaded, args.adapter)
    where = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device
    print(f"{where}: {loaded.name}, {'16-bit' if args.no_4bit else '4-bit NF4'} weights, "
          f"{loaded.dtype} compute, {loaded.gates[adapter].summary()}; {settings.max_new_tokens} tokens, greedy",
          flush=True)
    report = evaluate(loaded, load_cases(prompts, None, args.limit, None, None), adapter=adapter,
                      judge=load_judge(cpu["meta"].get("judge") or "rules"), settings=settings,
                      on_progress=ProgressPrinter("gpu"))
    if args.output:
        report["meta"].update(model=cpu["meta"].get("model"), adapter=args.adapter, prompts=prompts)
        write_report(report, args.output)
    counts = compare(cpu["rows"][:len(report["rows"])], report["rows"])
    if args.device.startswith("cuda"):
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    for name, c in counts.items():
        print(f"{name}: {c['prompts']} prompts; routed to the adapter CPU {c.get('routed_cpu', 0)}, "
              f"GPU {c.get('routed_gpu', 0)}, same route {c.get('same_route', 0)}; same answer {c.get('same_answer', 0)}; refused CPU {c.get('refused_cpu', 0)}, "
              f"GPU {c.get('refused_gpu', 0)}, same verdict {c.get('same_verdict', 0)}")
    print("RESULT " + json.dumps(counts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
