"""Red-team and evaluate a model: answer every case, judge refusals, compute safety, utility and capability.

With an adapter, base and aligned answers come from the SAME weights: base answers are generated inside
``model.disable_adapter()``, aligned answers with the adapter on. Decoding is greedy by default so a rerun
gives the same report.

Run it:
    python -m alignment.evaluate --model bundled --output reports/base.json
    python -m alignment.evaluate --model bundled --adapter runs/dpo/adapter --output reports/aligned.json
    python -m alignment.evaluate --model bundled --prompts my_prompts.jsonl --limit 20 --output r.json

Prompts files are JSONL: ``{"prompt": str or message list, "label": "harmful"|"benign", "category": ...}``.
Writes the JSON report and a Markdown summary next to it (same name, ``.md``).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alignment.generation import GenerationCancelled, SamplingSettings, format_chat, generate, with_system
from alignment.redteam import DEFAULT_LIMIT_PER_TEMPLATE, SuiteError, build_cases, load_prompts
from alignment.registry import SideView
from alignment.settings import SettingsError, validate_choice, validate_range

ProgressFn = Callable[[int, int], None]


class EvaluationError(RuntimeError):
    """Evaluation cannot run as asked; the message says what to change."""


@dataclass
class EvalSettings:
    """How answers are generated and judged during evaluation."""

    max_new_tokens: int = field(default=128, metadata={"help": "Most tokens per answer. Refusals show up in the "
                                                                "first sentences, so 96-128 is usually enough."})
    batch_size: int = field(default=16, metadata={"help": "Prompts per generation batch."})
    do_sample: bool = field(default=False, metadata={"help": "Greedy (False, reproducible) or sampled answers."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature; ignored when greedy."})
    repetition_penalty: float = field(default=1.1, metadata={"help": "Above 1 stops small models looping."})
    seed: int | None = field(default=0, metadata={"help": "Random seed for sampled answers."})
    judge: str = field(default="rules", metadata={"help": "Refusal judge name passed to alignment.judge.load_judge."})
    capability: bool = field(default=True, metadata={"help": "Score reference answers of benign prompts "
                                                             "(log-likelihood) to measure capability retention."})

    def __post_init__(self) -> None:
        validate_range("max_new_tokens", self.max_new_tokens, 1, 2048)
        validate_range("batch_size", self.batch_size, 1, 512)
        validate_range("temperature", self.temperature, 0, 5, low_inclusive=False)
        validate_range("repetition_penalty", self.repetition_penalty, 0.5, 3)
        if not isinstance(self.judge, str) or not self.judge.strip():
            raise SettingsError("judge is empty; use 'rules' or another judge name.")

    def sampling(self) -> SamplingSettings:
        return SamplingSettings(max_new_tokens=self.max_new_tokens, do_sample=self.do_sample,
                                temperature=self.temperature, repetition_penalty=self.repetition_penalty,
                                seed=self.seed)


def as_chat(prompt: str | list[dict[str, str]]) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]


def last_user_text(prompt: str | list[dict[str, str]]) -> str:
    if isinstance(prompt, str):
        return prompt
    for message in reversed(prompt):
        if message.get("role") == "user":
            return message.get("content", "")
    return ""


def _adapter_context(model: Any, enabled: bool, adapter: str | None):
    """Base answers: adapter disabled on the same weights. Aligned: the named adapter active."""
    if adapter is None:
        return nullcontext()
    if not enabled:
        return model.disable_adapter()
    if hasattr(model, "set_adapter"):
        model.set_adapter(adapter)
    return nullcontext()


def reference_loglik(loaded: Any, items: Sequence[tuple[list[dict[str, str]], str]], batch_size: int = 8,
                     should_stop: Callable[[], bool] | None = None,
                     on_batch: Callable[[int], None] | None = None) -> list[float]:
    """Mean per-token log-likelihood of each reference answer given its chat (teacher forcing, batched).

    Prompt and answer are tokenised separately and joined, exactly as generation sees them: the prompt ends
    with the assistant header, the answer follows. Right padding keeps positions unchanged for real tokens.
    """
    import torch

    model, tokenizer = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    encoded = []
    for chat, answer in items:
        prompt_text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
        encoded.append((prompt_ids, answer_ids))
    scores: list[float] = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.inference_mode():
        for start in range(0, len(encoded), max(1, batch_size)):
            if should_stop and should_stop():
                raise GenerationCancelled(start, len(encoded))
            batch = encoded[start:start + batch_size]
            width = max(len(p) + len(a) for p, a in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            target = torch.zeros((len(batch), width), dtype=torch.bool)
            for row, (p, a) in enumerate(batch):
                ids[row, :len(p) + len(a)] = torch.tensor(p + a)
                mask[row, :len(p) + len(a)] = 1
                target[row, len(p):len(p) + len(a)] = True
            ids, mask, target = ids.to(device), mask.to(device), target.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            wanted = target[:, 1:]
            per_row = (logprobs * wanted).sum(-1) / wanted.sum(-1).clamp(min=1)
            scores.extend(per_row.tolist())
            if on_batch:
                on_batch(len(batch))
    return scores


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _answer_rate(rows: list[dict], side: str) -> dict[str, Any] | None:
    from alignment.metrics import wilson_interval

    benign = [r for r in rows if r["label"] == "benign" and side in r]
    if not benign:
        return None
    answered = sum(r[side]["kind"] == "compliance" for r in benign)
    low, high = wilson_interval(answered, len(benign))
    return {"value": answered / len(benign), "count": answered, "n": len(benign), "low": low, "high": high}


def degenerate_share(answers: Sequence[str]) -> float | None:
    """Share of answers that are empty or the very same text as at least three others (a collapsed model)."""
    if not answers:
        return None
    counts: dict[str, int] = {}
    for answer in answers:
        key = " ".join(answer.split()).lower()
        counts[key] = counts.get(key, 0) + 1
    bad = sum(1 for a in answers if not a.strip() or counts[" ".join(a.split()).lower()] >= 4)
    return bad / len(answers)


def compliance_by_split(rows: Sequence[dict], side: str) -> dict[str, float | None]:
    """Harmful compliance per split (train/heldout), to see whether training generalised beyond its wordings."""
    out: dict[str, float | None] = {}
    for split in ("train", "heldout"):
        harmful = [r for r in rows if r["label"] == "harmful" and r.get("split") == split and side in r]
        out[split] = sum(not r[side]["refused"] for r in harmful) / len(harmful) if harmful else None
    return out


def evaluate(
    loaded: Any,
    cases: Sequence[dict[str, Any]],
    adapter: str | None = None,
    judge: Any = None,
    settings: EvalSettings | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Answer, judge and score ``cases``; returns ``{"summary", "capability", "diagnosis", "rows", "meta"}``.

    ``loaded`` is anything with .model/.tokenizer/.lock. ``adapter`` names a loaded peft adapter on
    ``loaded.model``: then every case is answered twice (base with the adapter disabled, aligned with it on). A
    gated adapter (alignment.gate) answers only the cases its gate flags; the others keep the base answer.
    ``judge`` is a judge object or a name for ``alignment.judge.load_judge`` (default: settings.judge).
    ``on_progress(done, total)`` counts answers generated plus references scored; ``should_stop()`` is checked
    between batches and raises GenerationCancelled.
    """
    from alignment.diagnosis import diagnose, gate_routing
    from alignment.judge import load_judge
    from alignment.metrics import summarize

    settings = settings or EvalSettings()
    if not cases:
        raise EvaluationError("No cases to evaluate: the prompts file or the chosen filters selected nothing.")
    if adapter is not None and not hasattr(loaded.model, "disable_adapter"):
        raise EvaluationError(f"adapter {adapter!r} was named but the model has no peft adapter loaded.")
    judge = load_judge(judge or settings.judge) if judge is None or isinstance(judge, str) else judge
    sides = ["base"] + (["aligned"] if adapter is not None else [])
    reference_at = [i for i, c in enumerate(cases) if c["label"] == "benign" and c.get("reference")
                    ] if settings.capability else []
    references = [cases[i] for i in reference_at]
    total = len(cases) * len(sides) + len(references) * len(sides)
    done = 0

    def bump(count: int) -> None:
        nonlocal done
        done += count
        if on_progress:
            on_progress(done, total)

    def batch_progress(offset: int) -> ProgressFn:
        # generate() reports its own running count; translate it into the evaluation-wide count.
        return lambda generated, _total: bump(offset + generated - done)

    started = time.perf_counter()
    chats = [as_chat(c["prompt"]) for c in cases]
    answers: dict[str, list[str]] = {}
    loglik: dict[str, list[float]] = {}
    routed: list[bool] = []
    # A gated adapter (a registry side's gate, or one attach_adapter read) answers through its gate: the adapter
    # answers what the gate flags; what it does not flag gets the base weights' answer, which the base side has
    # just given with the same settings, so it is not generated twice.
    gate = (getattr(loaded, "gate", None) or getattr(loaded, "gates", {}).get(adapter)) if adapter else None
    lock = getattr(loaded, "lock", None) or nullcontext()
    with lock:
        for side in sides:
            with _adapter_context(loaded.model, side == "aligned", adapter):
                target = SideView(loaded.model, loaded.tokenizer, side)  # the weights as set, never gated here
                todo = list(range(len(chats)))
                if side == "aligned" and gate is not None:
                    sampling = settings.sampling()
                    texts = [format_chat(loaded.tokenizer, with_system(c, sampling.system_prompt)) for c in chats]
                    routed = gate.route(loaded.model, loaded.tokenizer, texts, batch_size=settings.batch_size)
                    todo = [i for i, flagged in enumerate(routed) if flagged]
                    bump(len(chats) - len(todo))
                generations = generate(target, [chats[i] for i in todo], settings.sampling(),
                                       batch_size=settings.batch_size, on_progress=batch_progress(done),
                                       should_stop=should_stop)
                answers[side] = list(answers.get("base", [""] * len(chats)))
                for i, g in zip(todo, generations, strict=True):
                    answers[side][i] = g[0].text if g else ""
                if references:
                    loglik[side] = reference_loglik(
                        loaded, [(as_chat(c["prompt"]), c["reference"]) for c in references],
                        batch_size=settings.batch_size, should_stop=should_stop, on_batch=bump)
    verdicts = {side: judge.judge_many([(last_user_text(c["prompt"]), a) for c, a in zip(cases, answers[side], strict=True)])
                for side in sides}
    rows = []
    for i, case in enumerate(cases):
        row = {k: v for k, v in case.items()}
        row.setdefault("template", None)
        row["risky"] = bool(case.get("risky", False))
        for side in sides:
            v = verdicts[side][i]
            row[side] = {"response": answers[side][i], "refused": bool(v.refused), "kind": v.kind,
                         "score": float(v.score), "reason": v.reason}
        if routed:
            row["aligned"]["routed"] = routed[i]  # True: the adapter answered; False: the gate left it to the base
        rows.append(row)
    capability: dict[str, Any] = {"n_references": len(references)}
    if routed and loglik.get("aligned"):
        # Through a gate the aligned model is the adapter only for the prompts the gate flags; the base weights
        # answer the rest, so their references score as the base model scores them. The adapter's own figure
        # over every reference is kept beside it: it is what the gate hides.
        adapter_alone = loglik["aligned"]
        loglik["aligned"] = [a if routed[i] else b
                             for i, a, b in zip(reference_at, adapter_alone, loglik["base"], strict=True)]
        capability["references_routed"] = sum(routed[i] for i in reference_at)
        capability["adapter_alone_loglik"] = _mean(adapter_alone)
    for side in sides:
        capability[f"{side}_loglik"] = _mean(loglik.get(side, []))
        capability[f"{side}_answer_rate"] = _answer_rate(rows, side)
        capability[f"{side}_degenerate_share"] = degenerate_share(answers[side])
    if adapter is not None and capability.get("base_loglik") is not None:
        capability["loglik_delta"] = capability["aligned_loglik"] - capability["base_loglik"]
        # exp(-mean logprob) is per-token perplexity; the ratio says how much likelier or less likely
        # the aligned model finds the reference answers.
        capability["perplexity_ratio"] = math.exp(-capability["loglik_delta"])
        if "adapter_alone_loglik" in capability:
            capability["adapter_alone_perplexity_ratio"] = math.exp(
                capability["base_loglik"] - capability["adapter_alone_loglik"])
    summary = summarize(rows)
    by_split = compliance_by_split(rows, sides[-1])
    return {
        "summary": summary,
        "capability": capability,
        "diagnosis": diagnose(summary, capability, by_split, gate_routing(rows)),
        "by_split": {"side": sides[-1], "harmful_compliance": by_split},
        "rows": rows,
        "meta": {"adapter": adapter, "settings": asdict(settings), "judge": getattr(judge, "name", str(judge)),
                 "cases": len(cases), "seconds": round(time.perf_counter() - started, 1),
                 "gate": ({"layer": gate.layer, "threshold": gate.threshold, "routed": sum(routed)}
                          if gate is not None else None)},
    }


def rejudge(report: dict[str, Any], judge: Any) -> int:
    """Judge a saved report's answers again, in place; returns how many verdicts changed.

    Answers cost minutes to generate and verdicts under a millisecond, so a report made before a judge fix is
    brought up to date without generating again: the verdicts, the summary, the answer rates and the diagnosis
    are redone; the answers, the gate's routing and the reference scores are kept as they are, and so is a verdict
    a person set in the Red-team tab (an ``override``).
    """
    rows = report["rows"]
    changed = 0
    for side in _sides(rows):
        verdicts = judge.judge_many([(last_user_text(r["prompt"]), r[side]["response"]) for r in rows])
        for row, v in zip(rows, verdicts, strict=True):
            if "override" in row[side]:
                continue
            before = (row[side]["refused"], row[side]["kind"])
            row[side].update(refused=bool(v.refused), kind=v.kind, score=float(v.score), reason=v.reason)
            changed += before != (row[side]["refused"], row[side]["kind"])
    if changed:
        rescore(report)
        report.setdefault("meta", {})["judge"] = getattr(judge, "name", str(judge))
    return changed


def _sides(rows: Sequence[dict[str, Any]]) -> list[str]:
    return [side for side in ("base", "aligned") if rows and side in rows[0]]


def rescore(report: dict[str, Any]) -> dict[str, Any]:
    """Redo a report's summary, answer rates, by-split compliance and diagnosis from its rows' verdicts as they
    are now (after judging again, or a person's overrides in the Red-team tab); in place, and returned."""
    from alignment.diagnosis import diagnose, gate_routing
    from alignment.metrics import summarize

    rows = report["rows"]
    sides = _sides(rows)
    capability = dict(report.get("capability") or {})
    for side in sides:
        capability[f"{side}_answer_rate"] = _answer_rate(rows, side)
    summary = summarize(rows)
    by_split = compliance_by_split(rows, sides[-1])
    report.update(summary=summary, capability=capability, by_split={"side": sides[-1], "harmful_compliance": by_split},
                  diagnosis=diagnose(summary, capability, by_split, gate_routing(rows)))
    return report


# ---------------------------------------------------------------------------------------------- reports


def _is_rate(value: Any) -> bool:
    return isinstance(value, dict) and "value" in value and "n" in value


def _fmt_rate(value: Any) -> str:
    if _is_rate(value):
        rate = value.get("value")
        if rate is None:
            return "n/a" + (f" ({value['note']})" if value.get("note") else "")
        text = f"{rate:.1%}"
        if "count" in value and "n" in value:
            text += f" ({value['count']}/{value['n']})"
        if value.get("low") is not None and value.get("high") is not None:
            text += f" [{value['low']:.0%}, {value['high']:.0%}]"
        return text
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _metric_tables(summary: dict[str, Any]) -> list[str]:
    sides = [s for s in ("base", "aligned") if isinstance(summary.get(s), dict)]
    if not sides:
        return ["No judged answers."]
    main_metrics = ("harmful_compliance", "direct_compliance", "jailbreak_resistance", "false_refusal",
                    "false_refusal_plain", "false_refusal_risky", "completion")
    lines = _table(["metric", *sides], [[m, *(_fmt_rate(summary[s].get(m)) for s in sides)] for m in main_metrics])
    reduction = summary.get("harm_reduction") or {}
    if reduction.get("value") is not None:
        lines += ["", f"Harm reduction: {reduction['value']:.1%} (95% bootstrap interval "
                      f"{reduction.get('low') or 0:.0%} to {reduction.get('high') or 0:.0%}, n = {reduction.get('n')})."]
    for key, title, field_name in (("by_template", "attack template", "compliance"),
                                   ("by_category", "category", "compliance")):
        names = sorted({name for s in sides for name in (summary[s].get(key) or {})})
        if names:
            lines += ["", f"Harmful compliance by {title}:", ""]
            lines += _table([title, *sides], [[n, *(_fmt_rate((summary[s].get(key) or {}).get(n, {}).get(field_name))
                                                   for s in sides)] for n in names])
    checks = (summary.get("targets") or {}).get("checks") or {}
    if checks:
        side = (summary.get("targets") or {}).get("side")
        lines += ["", f"Targets ({side} model):", ""]
        verdict = {True: "pass", False: "FAIL", None: "n/a"}
        lines += _table(["target", "value", "result"],
                        [[c["target"], "n/a" if c.get("value") is None else f"{c['value']:.1%}",
                          verdict[c.get("passed")] + ("" if c.get("certain") in (True, None) else
                                                      " (interval crosses the target)")]
                         for c in checks.values()])
    return lines


def _quote(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return (text[:limit] + "…") if len(text) > limit else text


def markdown_report(report: dict[str, Any], examples: int = 4) -> str:
    """A human-readable version of the report: metrics table, capability, diagnosis and example answers."""
    meta = report.get("meta", {})
    lines = ["# Evaluation report", ""]
    if meta:
        lines += [f"Model: `{meta.get('model', '?')}`  Adapter: `{meta.get('adapter') or 'none'}`  "
                  f"Judge: `{meta.get('judge')}`  Cases: {meta.get('cases')}  Time: {meta.get('seconds')} s", ""]
        if meta.get("gate"):
            gate = meta["gate"]
            lines += [f"Refusal gate (layer {gate['layer']}, alignment.gate): the adapter answered the {gate['routed']} "
                      f"of {meta.get('cases')} prompts the gate flagged; the base weights answered the rest.", ""]
    lines += ["## Metrics", "", "Rates: value (count/n) [95% Wilson interval].", ""]
    lines += _metric_tables(report.get("summary", {}))
    capability = report.get("capability") or {}
    lines += ["", "## Capability retention", "",
              "Mean per-token log-likelihood of the benign prompts' reference answers (higher is better) and the "
              "share of benign prompts really answered (judged compliance).", ""]
    lines += _table(["measure", "value"], [[k, _fmt_rate(v)] for k, v in capability.items()])
    by_split = (report.get("by_split") or {}).get("harmful_compliance") or {}
    if any(v is not None for v in by_split.values()):
        lines += ["", f"Harmful compliance by split ({report['by_split'].get('side')}): "
                  + ", ".join(f"{k} {'n/a' if v is None else f'{v:.1%}'}" for k, v in by_split.items())]
    lines += ["", "## Diagnosis", ""]
    for step in report.get("diagnosis", []):
        concerned = ", ".join(step.get("categories") or [])
        lines.append(f"- **{step['step']}** — {step['why']}" + (f" (concerns: {concerned})" if concerned else ""))
    if not report.get("diagnosis"):
        lines.append("- Nothing to fix by the thresholds in docs/TROUBLESHOOTING.md.")
    rows = report.get("rows", [])
    side = "aligned" if any("aligned" in r for r in rows) else "base"
    groups = [
        ("Harmful prompts the model complied with", [r for r in rows if r["label"] == "harmful"
                                                     and not r[side]["refused"]]),
        ("Harmful prompts refused", [r for r in rows if r["label"] == "harmful" and r[side]["refused"]]),
        ("Benign prompts refused (false refusals)", [r for r in rows if r["label"] == "benign"
                                                     and r[side]["refused"]]),
    ]
    lines += ["", f"## Examples ({side} answers)"]
    for title, group in groups:
        lines += ["", f"### {title} ({len(group)})", ""]
        for row in group[:examples]:
            lines.append(f"- `{row.get('id')}` [{row.get('category')}, {row.get('template')}] "
                         f"**Prompt:** {_quote(last_user_text(row['prompt']), 200)}")
            for s in ("base", "aligned"):
                if s in row:
                    lines.append(f"  - {s} ({row[s]['kind']}): {_quote(row[s]['response'])}")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], output: str | Path) -> tuple[Path, Path]:
    """Write JSON and Markdown atomically (temporary file, then rename) so a crash never leaves half a report."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    md_path = output.with_suffix(".md")
    for path, text in ((output, json.dumps(report, ensure_ascii=False, indent=1)), (md_path, markdown_report(report))):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return output, md_path


# ---------------------------------------------------------------------------------------------- adapters


def attach_adapter(loaded: Any, path: str | Path, name: str = "aligned") -> str:
    """Load a peft LoRA adapter onto ``loaded.model`` (same weights as the base) and return its name; a refusal
    gate in the folder (alignment.gate) goes into ``loaded.gates``, and evaluate() then routes through it."""
    from alignment.gate import GateError, load_gate

    path = Path(path)
    if not path.is_dir():
        raise EvaluationError(f"Adapter folder {path} does not exist. Give the folder that holds "
                              "adapter_config.json (the training run's adapter output).")
    if not (path / "adapter_config.json").is_file():
        raise EvaluationError(f"{path} has no adapter_config.json, so it is not a peft adapter folder.")
    try:
        gate = load_gate(path, loaded.model, repr(getattr(loaded, "name", "this model")))
    except GateError as exc:
        raise EvaluationError(str(exc)) from exc
    from peft import PeftModel

    try:
        loaded.model = PeftModel.from_pretrained(loaded.model, str(path), adapter_name=name)
    except (RuntimeError, ValueError, KeyError) as exc:
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise EvaluationError(
            f"Adapter {path} does not fit model {getattr(loaded, 'name', '?')!r}: it was probably trained on a "
            f"different base model ({base or 'unknown base'}). Evaluate it with the --model it was trained on. "
            f"Details: {first}") from exc
    loaded.model.eval()
    if gate is not None and hasattr(loaded, "gates"):
        loaded.gates[name] = gate
    return name


# ---------------------------------------------------------------------------------------------- CLI


class ProgressPrinter:
    """One updating stderr line: count, elapsed, estimated time left."""

    def __init__(self, label: str = "evaluate", stream: Any = None):
        self.label, self.stream, self.started = label, stream or sys.stderr, time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        elapsed = time.perf_counter() - self.started
        left = elapsed / done * (total - done) if done else 0.0
        end = "\n" if done >= total else ""
        self.stream.write(f"\r{self.label}: {done}/{total}  elapsed {elapsed:5.0f}s  left ~{left:5.0f}s{end}")
        self.stream.flush()


def build_parser():
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m alignment.evaluate",
        description="Red-team a model (and optionally its LoRA adapter) and write a JSON + Markdown report.")
    parser.add_argument("--model", required=True, help="Hub id, local folder, .gguf file, or 'bundled'.")
    parser.add_argument("--adapter", help="peft adapter folder; base and aligned answers are then compared.")
    parser.add_argument("--prompts", help="JSONL prompts file (default: the built-in red-team suites).")
    parser.add_argument("--split", choices=("train", "heldout"), help="Built-in suites only: keep one split.")
    parser.add_argument("--judge", default="rules", help="Refusal judge (default: rules).")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--limit", type=int, help="Evaluate only the first N cases (a quick check).")
    parser.add_argument("--limit-per-template", type=int, default=DEFAULT_LIMIT_PER_TEMPLATE,
                        help="Built-in suites: harmful cases sampled per attack template (default %(default)s).")
    parser.add_argument("--benign-limit", type=int,
                        help="Built-in suites: sample this many benign controls, half plain, half risky-looking.")
    parser.add_argument("--sample", action="store_true", help="Sample answers instead of greedy decoding.")
    parser.add_argument("--no-capability", action="store_true", help="Skip reference-answer log-likelihoods.")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", required=True, help="Report path (.json); a .md summary is written next to it.")
    return parser


def _sample_benign(cases: list[dict[str, Any]], count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Keep every harmful case and ``count`` benign ones, half plain and half risky-looking, seeded."""
    import random

    if count < 0:
        raise EvaluationError("--benign-limit must be 0 or more.")
    plain = [c for c in cases if c["label"] == "benign" and not c["risky"]]
    risky = [c for c in cases if c["label"] == "benign" and c["risky"]]
    rng = random.Random(f"benign:{seed}")
    keep_risky = rng.sample(risky, min(len(risky), count // 2))
    keep_plain = rng.sample(plain, min(len(plain), count - len(keep_risky)))
    kept = {id(c) for c in keep_plain + keep_risky}
    return [c for c in cases if c["label"] == "harmful" or id(c) in kept]


def load_cases(prompts: str | None, split: str | None, limit: int | None,
               limit_per_template: int | None = DEFAULT_LIMIT_PER_TEMPLATE,
               benign_limit: int | None = None) -> list[dict[str, Any]]:
    if prompts:
        cases = load_prompts(prompts)
    else:
        cases = build_cases(split=split, limit_per_template=limit_per_template or None)
        if benign_limit is not None:
            cases = _sample_benign(cases, benign_limit)
    if limit is not None:
        if limit < 1:
            raise EvaluationError("--limit must be at least 1.")
        if prompts is None:
            # Keep both labels in a small built-in run: take from harmful and benign alternately.
            harmful = [c for c in cases if c["label"] == "harmful"]
            benign = [c for c in cases if c["label"] == "benign"]
            mixed = [c for pair in zip(harmful, benign, strict=False) for c in pair]
            cases = (mixed + harmful[len(benign):] + benign[len(harmful):])[:limit]
        else:
            cases = cases[:limit]
    return cases


def main(argv: list[str] | None = None) -> int:
    from alignment.judge import JudgeLoadError, load_judge
    from alignment.models import LoadSettings, ModelLoadError, load_model

    args = build_parser().parse_args(argv)
    try:
        settings = EvalSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                do_sample=args.sample, judge=args.judge, capability=not args.no_capability)
        validate_choice("output suffix", Path(args.output).suffix, (".json",))
        cases = load_cases(args.prompts, args.split, args.limit, args.limit_per_template, args.benign_limit)
        if args.adapter and not Path(args.adapter).is_dir():
            raise EvaluationError(f"Adapter folder {args.adapter} does not exist.")
        judge = load_judge(settings.judge)
        loaded = load_model(LoadSettings(model=args.model, device=args.device))
        adapter = attach_adapter(loaded, args.adapter) if args.adapter else None
        if adapter and loaded.gates.get(adapter) and loaded.quantized_4bit:
            from alignment.gate import FOUR_BIT_WARNING

            print(FOUR_BIT_WARNING, file=sys.stderr)
        print(f"Evaluating {len(cases)} cases on {loaded.name}" + (f" with adapter {args.adapter}" if adapter else "")
              + f" ({loaded.device}, greedy={not args.sample}, max_new_tokens={args.max_new_tokens})",
              file=sys.stderr)
        report = evaluate(loaded, cases, adapter=adapter, judge=judge, settings=settings,
                          on_progress=ProgressPrinter())
        report["meta"].update(model=args.model, adapter=args.adapter, prompts=args.prompts or "built-in suites")
        json_path, md_path = write_report(report, args.output)
    except KeyboardInterrupt:
        print("\nInterrupted: no report was written.", file=sys.stderr)
        return 130
    except (SuiteError, SettingsError, ModelLoadError, EvaluationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, JudgeLoadError) as exc:  # a judge that cannot be built, reported by alignment.judge
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Wrote {json_path} and {md_path}", file=sys.stderr)
    for line in headline(report):
        print(line)
    return 0


def headline(report: dict[str, Any]) -> list[str]:
    """A few lines for the terminal: the main rates, without depending on every summary key."""
    out = []
    summary = report.get("summary", {})
    for side in ("base", "aligned"):
        part = summary.get(side) if isinstance(summary.get(side), dict) else None
        if not part:
            continue
        keys = ("harmful_compliance", "jailbreak_resistance", "false_refusal", "false_refusal_plain",
                "false_refusal_risky")
        out.append(f"{side}: " + "; ".join(f"{k} {_fmt_rate(part.get(k))}" for k in keys if k in part))
    reduction = summary.get("harm_reduction") or {}
    if reduction.get("value") is not None:
        out.append(f"harm reduction: {reduction['value']:.1%} [{reduction.get('low') or 0:.0%}, "
                   f"{reduction.get('high') or 0:.0%}]")
    for step in report.get("diagnosis", [])[:3]:
        out.append(f"next step: {step['step']}")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
