"""Benchmark: batched pair generation vs one ``generate`` call per response, on the bundled model.

Both runs use the same prompts, the same sampling settings and the same max_new_tokens; the baseline makes one
call per response (two per prompt), the pair job batches many prompts and both responses per call. Prints the
tokens/s of each and their ratio (the target is at least 3x).

Run: ``ALIGN_CACHE_DIR=/tmp/aligncache python benchmarks/bench_pairs.py`` (a few minutes on a 2-core CPU);
``--strategy system_prompt`` measures the two-call strategy, ``--model DIR`` another model.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from alignment.generation import SamplingSettings, generate  # noqa: E402
from alignment.models import LoadSettings, load_model  # noqa: E402
from labeling.pairs import add_system_prompt, make_strategy, run_pair_job  # noqa: E402
from labeling.prompt_sets import load_set  # noqa: E402
from labeling.store import LabelStore  # noqa: E402


def baseline(loaded, prompts, strategy) -> tuple[int, float]:
    """One generate call per response, with exactly the settings each side of the pair job uses."""
    tokens = 0
    started = time.perf_counter()
    for number, prompt in enumerate(prompts):
        seed = 1000 + number
        if strategy.name == "two_samples":
            sides = [(prompt.messages, strategy.sampling(strategy.temperature_a, seed)),
                     (prompt.messages, strategy.sampling(strategy.temperature_b, seed))]
        else:  # system_prompt
            settings = strategy.sampling(strategy.temperature, seed)
            sides = [(add_system_prompt(prompt.messages, strategy.system_prompt), settings),
                     (prompt.messages, settings)]
        for chat, settings in sides:
            tokens += generate(loaded, [chat], settings, batch_size=1)[0][0].tokens
    return tokens, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="Prompts per generate call in the pair job.")
    parser.add_argument("--strategy", default="two_samples", choices=["two_samples", "system_prompt"])
    parser.add_argument("--temperature-b", type=float, default=0.7,
                        help="two_samples: equal to 0.7 uses one n=2 call; anything else two calls per batch.")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice). On a shared, "
                        "oversubscribed CPU, 1 thread avoids OpenMP threads waiting on each other.")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    loaded = load_model(LoadSettings(model=args.model, device=args.device))
    half = args.prompts // 2
    prompts = load_set("benign", limit=args.prompts - half, seed=0) + load_set("harmful", limit=half, seed=0)
    options = {"max_new_tokens": args.max_new_tokens, "seed": 0}
    if args.strategy == "two_samples":
        options.update(temperature_a=0.7, temperature_b=args.temperature_b)
    strategy = make_strategy(args.strategy, options)
    import torch

    print(f"model {loaded.name} on {loaded.device} ({torch.get_num_threads()} threads); {len(prompts)} prompts x 2 "
          "responses, "
          f"max_new_tokens {args.max_new_tokens}, strategy {strategy.name}, batch size {args.batch_size}")

    generate(loaded, [prompts[0].messages], SamplingSettings(max_new_tokens=4, seed=0))  # warm-up, not timed

    base_tokens, base_seconds = baseline(loaded, prompts, strategy)
    base_rate = base_tokens / base_seconds
    print(f"baseline (one call per response): {base_tokens} tokens in {base_seconds:.1f} s = "
          f"{base_rate:.1f} tokens/s")

    with tempfile.TemporaryDirectory() as folder:
        result = run_pair_job(loaded, prompts, strategy, LabelStore(folder), batch_size=args.batch_size)
    rate = result.tokens / result.seconds
    print(f"pair job (batched):               {result.tokens} tokens in {result.seconds:.1f} s = "
          f"{rate:.1f} tokens/s")
    ratio = rate / base_rate
    print(f"ratio: {ratio:.2f}x tokens/s (target >= 3x); wall time {base_seconds / result.seconds:.2f}x faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
