"""Accuracy and speed of the refusal judges on the hand-labelled set (alignment/data/judge_labelled.jsonl).

Run: ``python benchmarks/bench_judge.py [--show-errors dev]``

For RuleJudge and both keyword baselines, on the dev and the holdout split: binary accuracy, precision and
recall with refusal (full_refusal) as the positive class, 3-class accuracy (plus the "real" subset: holdout
answers sampled from SmolLM2-135M-Instruct itself, marked by a "source" field), then the ratio of RuleJudge's
accuracy over the best baseline's and milliseconds per answer, all measured in this run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignment.judge import Judge, KeywordJudge, RuleJudge  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "alignment" / "data" / "judge_labelled.jsonl"


def load_labelled(path: Path = DATA) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def score_judge(judge: Judge, rows: list[dict]) -> dict[str, float]:
    """Binary accuracy/precision/recall (refusal positive) and 3-class accuracy of ``judge`` on ``rows``."""
    verdicts = judge.judge_many([(r["prompt"], r["response"]) for r in rows])
    tp = sum(v.refused and r["kind"] == "full_refusal" for v, r in zip(verdicts, rows, strict=True))
    fp = sum(v.refused and r["kind"] != "full_refusal" for v, r in zip(verdicts, rows, strict=True))
    fn = sum(not v.refused and r["kind"] == "full_refusal" for v, r in zip(verdicts, rows, strict=True))
    correct = sum(v.refused == (r["kind"] == "full_refusal") for v, r in zip(verdicts, rows, strict=True))
    correct3 = sum(v.kind == r["kind"] for v, r in zip(verdicts, rows, strict=True))
    n = len(rows) or 1
    return {"n": len(rows), "accuracy": correct / n, "precision": tp / (tp + fp) if tp + fp else 0.0,
            "recall": tp / (tp + fn) if tp + fn else 0.0, "accuracy_3class": correct3 / n}


def ms_per_answer(judge: Judge, rows: list[dict], repeats: int = 5) -> float:
    pairs = [(r["prompt"], r["response"]) for r in rows]
    start = time.perf_counter()
    for _ in range(repeats):
        judge.judge_many(pairs)
    return (time.perf_counter() - start) * 1000 / (repeats * len(pairs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--show-errors", choices=("dev", "holdout"), help="list RuleJudge's mistakes on a split")
    args = parser.parse_args()
    rows = load_labelled()
    judges: list[Judge] = [RuleJudge(), KeywordJudge("start"), KeywordJudge("anywhere")]
    print(f"Labelled set: {DATA.name}, {len(rows)} answers")
    print(f"{'split':15} {'judge':17} {'n':>4} {'acc':>6} {'prec':>6} {'recall':>6} {'acc3':>6}")
    results: dict[tuple[str, str], dict[str, float]] = {}
    subsets = {split: [r for r in rows if r["split"] == split] for split in ("dev", "holdout")}
    # Answers sampled from the real bundled model (field "source"), labelled before any judge saw them.
    real = [r for r in rows if r.get("source")]
    if real:
        subsets["holdout-written"] = [r for r in subsets["holdout"] if not r.get("source")]
        subsets["real"] = real
    for split, subset in subsets.items():
        for judge in judges:
            m = score_judge(judge, subset)
            results[(split, judge.name)] = m
            print(f"{split:15} {judge.name:17} {m['n']:>4} {m['accuracy']:6.3f} {m['precision']:6.3f} "
                  f"{m['recall']:6.3f} {m['accuracy_3class']:6.3f}")
    for split in subsets:
        best_name = max(("keyword-start", "keyword-anywhere"), key=lambda n: results[(split, n)]["accuracy"])
        ratio = results[(split, "rules")]["accuracy"] / max(results[(split, best_name)]["accuracy"], 1e-9)
        print(f"{split}: RuleJudge accuracy / best baseline ({best_name}) accuracy = {ratio:.2f}x")
    for judge in judges:
        print(f"{judge.name:17} {ms_per_answer(judge, rows):.3f} ms per answer")
    if args.show_errors:
        rule = RuleJudge()
        for r in rows:
            if r["split"] != args.show_errors:
                continue
            v = rule.judge(r["prompt"], r["response"])
            if v.kind != r["kind"]:
                mark = "BINARY" if v.refused != (r["kind"] == "full_refusal") else "3class"
                print(f"\n[{mark}] gold={r['kind']} got={v.kind} ({v.score:.2f}: {v.reason}) type={r['type']}\n"
                      f"  P: {r['prompt']}\n  R: {r['response'][:300]!r}")


if __name__ == "__main__":
    main()
