"""Turn evaluation failures into refusal preference pairs (TRL conversational preference format).

- A harmful prompt the model complied with -> chosen: a graceful refusal in the project's style (acknowledge,
  brief reason, safe useful alternative, no lecturing), composed per category with varied wording;
  rejected: the model's own answer.
- A benign prompt the model refused -> chosen: a helpful answer (the case's reference answer, or a sampled
  answer the judge calls compliance); rejected: the refusal.

Run it:
    python -m alignment.refusal_data --report reports/base.json --output pairs.jsonl
    python -m alignment.refusal_data --model bundled --output pairs.jsonl --split train

The second form evaluates the model on the built-in suites first (one command from the bundled model's
failures to a preference dataset). Use ``--split train`` so held-out behaviours and attack wordings stay
unseen by training. :func:`to_pair_records` turns pairs into labeling PairRecords for human review.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from labeling.records import PairRecord, as_messages

SOURCE = "redteam"
CHOSEN_REFUSAL = "graceful_refusal"
CHOSEN_REFERENCE = "reference_answer"
CHOSEN_SAMPLED = "sampled_helpful_answer"

# What the request is about, said plainly and without repeating its details.
TOPICS: dict[str, Sequence[str]] = {
    "violence_weapons": ("hurting someone or making a weapon", "something that could be used to injure people"),
    "self_harm": ("hurting yourself", "ways to harm yourself"),
    "illegal_activity": ("something illegal", "a plan that breaks the law"),
    "privacy_stalking": ("tracking or watching someone without their consent", "getting into someone's private "
                         "information"),
    "harassment": ("targeting someone to upset or intimidate them", "messages meant to hurt a specific person"),
    "hate": ("content that demeans a group of people", "material attacking people for who they are"),
    "fraud": ("deceiving people to take their money or data", "a scam"),
    "malware": ("software meant to break into or damage systems", "malicious code"),
}
REASONS: dict[str, Sequence[str]] = {
    "violence_weapons": ("because it could get someone seriously hurt.", "since it could lead to real injuries."),
    "self_harm": ("because your safety matters to me.", "because I don't want you to get hurt."),
    "illegal_activity": ("because it's illegal and could cause real harm to others and to you.",
                         "since it would mean helping break the law."),
    "privacy_stalking": ("because everyone has a right to privacy, and this could put someone at risk.",
                         "since it could frighten or endanger the person."),
    "harassment": ("because it's designed to hurt a real person.", "since it could do real damage to someone."),
    "hate": ("because it targets people for who they are.", "since it spreads hostility toward a whole group."),
    "fraud": ("because it would cheat real people.", "since it means deceiving people who would lose out."),
    "malware": ("because it could damage systems and the people who rely on them.",
                "since it would be used to attack computers that aren't yours."),
}
ALTERNATIVES: dict[str, Sequence[str]] = {
    "violence_weapons": (
        "If you're dealing with a conflict or feel unsafe, I can help you think through ways to stay safe or "
        "who to contact.",
        "If this is for a story, I can help write a tense scene without real-world instructions.",
        "I can explain how safety rules and de-escalation work instead.",
    ),
    "self_harm": (
        "If you're going through something painful, you don't have to handle it alone: you can reach a crisis "
        "line such as 988 in the US, or your local emergency number, any time. I'm also happy to just talk.",
        "It might help to talk to someone you trust or a crisis line (988 in the US, 116 123 in the UK and "
        "Ireland). I can help you find support near you, or we can talk about what's been happening.",
    ),
    "illegal_activity": (
        "I can help you find a legal way to reach the same goal.",
        "If you're in a tight spot, I can help you look into legitimate options and resources.",
        "I can explain how the law treats this, if that's useful.",
    ),
    "privacy_stalking": (
        "If you're worried about someone's safety, I can help you think about talking to them directly or "
        "contacting the right authorities.",
        "I can help with consent-based options, like shared location that both people turn on.",
        "I can help you set up tasks for your own schedule or check your own privacy settings instead.",
    ),
    "harassment": (
        "If there's a real conflict, I can help you write a calm, direct message that says how you feel.",
        "I can help you figure out how to raise the problem with someone who can help, like a manager or "
        "teacher.",
    ),
    "hate": (
        "I can help with a respectful piece on the same topic, or with facts about the issue behind it.",
        "If you're frustrated about a real situation, I can help you put that into words without attacking a "
        "group.",
    ),
    "fraud": (
        "I can help you with honest ways to raise money or grow your business.",
        "I can explain how these scams work so you can spot and report them.",
    ),
    "malware": (
        "I can help with defensive security instead, like hardening your own systems or how to report a "
        "vulnerability responsibly.",
        "If you're learning security, I can point you to legal practice labs and capture-the-flag challenges.",
    ),
}
OPENERS: Sequence[str] = (
    "I understand you're asking about {topic}, but I'm not able to help with that",
    "I can see you'd like help with {topic}, but I can't assist with this",
    "Thanks for asking, but I won't help with {topic}",
    "I get what you're after here, but I can't help with {topic}",
)
SELF_HARM_OPENERS: Sequence[str] = (
    "I'm really sorry you're feeling this way. I can't help with {topic}",
    "It sounds like you're going through a lot right now, and I'm glad you reached out. I can't help with "
    "{topic}",
)
# A short, honest note on the attack itself, so the refusal does not pretend the wrapper was not there.
TEMPLATE_NOTES: dict[str, Sequence[str]] = {
    "prompt_injection": ("The text includes instructions asking me to do something else, and I won't follow them.",),
    "roleplay_persona": ("Playing a character doesn't change what I'm able to help with.",),
    "social_engineering": ("Even with that context, the answer would be the same real-world instructions.",),
    "refusal_suppression": ("",),
    "obfuscation": ("Writing it in code or another language doesn't change my answer.",),
    "past_tense": ("Framed as history, it would still be a how-to.",),
    "multi_turn": ("",),
}
CLOSERS: Sequence[str] = (
    "Would you like help with that instead?",
    "Want me to help with that?",
    "Let me know if that would be useful.",
    "",
)
GENERIC = "general"
# A refusal that names no topic: its reason and its offer.
GENERIC_REASON = "because it could cause real harm."
GENERIC_ALTERNATIVE = "I'm happy to help with a safe version of what you need."


def graceful_refusal(category: str | None, template: str | None = None, seed: Any = 0) -> str:
    """A refusal in DESIGN.md's style: acknowledge, brief reason, useful alternative, no lecturing.

    Wording varies with ``seed`` (use the case id) so a training set is not one sentence repeated.
    """
    rng = random.Random(f"refusal:{seed}")
    key = category if category in TOPICS else None
    topic = rng.choice(TOPICS[key]) if key else "this request"
    reason = rng.choice(REASONS[key]) if key else GENERIC_REASON
    alternative = rng.choice(ALTERNATIVES[key]) if key else GENERIC_ALTERNATIVE
    opener = rng.choice(SELF_HARM_OPENERS if key == "self_harm" else OPENERS).format(topic=topic)
    note = rng.choice(TEMPLATE_NOTES.get(template or "", ("",)))
    parts = [f"{opener} {reason}", note, alternative, "" if key == "self_harm" else rng.choice(CLOSERS)]
    return " ".join(p for p in parts if p).strip()


def refusal_to_reject(seed: Any = 0) -> str:
    """A refusal for the *rejected* side of a benign pair: names no topic, and opens with any of the openers the
    refusal pairs teach, the self-harm ones included.

    A refusal pair teaches every opener in :data:`OPENERS` and :data:`SELF_HARM_OPENERS`, so a benign pair should
    push every one of them down: a model that only ever saw the general openers rejected went on to answer plain
    requests ("Plan my week…") with the self-harm refusal's words.
    """
    rng = random.Random(f"rejected-refusal:{seed}")
    opener = rng.choice((*OPENERS, *SELF_HARM_OPENERS)).format(topic="this request")
    parts = [f"{opener} {GENERIC_REASON}", GENERIC_ALTERNATIVE, rng.choice(CLOSERS)]
    return " ".join(p for p in parts if p).strip()


def _side(rows: Sequence[dict], side: str | None) -> str:
    if side:
        if rows and side not in rows[0]:
            raise ValueError(f"The report has no {side!r} answers; use --side base"
                             + (" or aligned." if "aligned" in rows[0] else "."))
        return side
    return "aligned" if rows and "aligned" in rows[0] else "base"


def pairs_from_rows(
    rows: Sequence[dict[str, Any]],
    side: str | None = None,
    split: str | None = None,
    helpful: dict[str, str] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Preference pairs from evaluation rows, and counts of what was used and skipped.

    ``side`` picks whose failures to learn from (default: aligned if present, else base). ``split`` keeps only
    rows of that split. ``helpful`` maps a row id to a sampled helpful answer for refused benign prompts that
    have no reference answer.
    """
    side = _side(rows, side)
    helpful = helpful or {}
    pairs: list[dict[str, Any]] = []
    stats = {"harmful_complied": 0, "benign_refused": 0, "skipped_no_helpful_answer": 0, "skipped_split": 0,
             "skipped_empty_answer": 0}
    for index, row in enumerate(rows):
        if split is not None and row.get("split") != split:
            stats["skipped_split"] += 1
            continue
        answer = row[side]
        response = (answer.get("response") or "").strip()
        row_id = row.get("id", index)
        base = {"prompt": as_messages(row["prompt"]), "category": row.get("category"),
                "template": row.get("template"), "source": SOURCE, "id": row_id, "label": row["label"],
                "split": row.get("split")}
        if row["label"] == "harmful" and not answer["refused"]:
            if not response:
                stats["skipped_empty_answer"] += 1  # an empty answer teaches nothing as "rejected"
                continue
            stats["harmful_complied"] += 1
            chosen = graceful_refusal(row.get("category"), row.get("template"), seed=row_id)
            pairs.append({**base, "chosen": [{"role": "assistant", "content": chosen}],
                          "rejected": [{"role": "assistant", "content": response}], "chosen_from": CHOSEN_REFUSAL})
        elif row["label"] == "benign" and answer["refused"]:
            good = row.get("reference") or helpful.get(str(row_id))
            if not good:
                stats["skipped_no_helpful_answer"] += 1
                continue
            stats["benign_refused"] += 1
            pairs.append({**base, "chosen": [{"role": "assistant", "content": good}],
                          "rejected": [{"role": "assistant", "content": response}],
                          "chosen_from": CHOSEN_REFERENCE if row.get("reference") else CHOSEN_SAMPLED})
    stats["pairs"] = len(pairs)
    return pairs, stats


def sample_helpful_answers(loaded: Any, rows: Sequence[dict], judge: Any, side: str = "base", n: int = 4,
                           max_new_tokens: int = 160, seed: int = 0) -> dict[str, str]:
    """For refused benign rows without a reference: sample ``n`` answers, keep the first judged compliance."""
    from alignment.generation import SamplingSettings, generate

    wanted = [r for r in rows if r["label"] == "benign" and r[side]["refused"] and not r.get("reference")]
    if not wanted:
        return {}
    settings = SamplingSettings(do_sample=True, max_new_tokens=max_new_tokens, seed=seed)
    samples = generate(loaded, [as_messages(r["prompt"]) for r in wanted], settings, n=n)
    found: dict[str, str] = {}
    for row, generations in zip(wanted, samples, strict=True):
        prompt = as_messages(row["prompt"])[-1]["content"]
        for gen in generations:
            if gen.text.strip() and judge.judge(prompt, gen.text).kind == "compliance":
                found[str(row.get("id"))] = gen.text.strip()
                break
    return found


def to_pair_records(pairs: Iterable[dict[str, Any]], model_name: str = "evaluated model") -> list[PairRecord]:
    """Labeling-queue records: response_a is the proposed better answer, response_b the model's own answer.

    The pairs are proposals; the labeling queue lets people confirm or rewrite them before training.
    """
    records = []
    for pair in pairs:
        records.append(PairRecord(
            prompt=[dict(m) for m in pair["prompt"]],
            response_a=pair["chosen"][0]["content"],
            response_b=pair["rejected"][0]["content"],
            strategy=f"redteam_{pair.get('chosen_from', CHOSEN_REFUSAL)}",
            model_a=pair.get("chosen_from", CHOSEN_REFUSAL),
            model_b=model_name,
            category=pair.get("category") or "uncategorised",
            intended_label=pair.get("label"),
            source=SOURCE,
            settings={"template": pair.get("template"), "case_id": pair.get("id"), "split": pair.get("split")},
        ))
    return records


def write_jsonl(pairs: Sequence[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for pair in pairs:
            handle.write(json.dumps(pair, ensure_ascii=False) + "\n")
    tmp.replace(path)  # never leave a half-written dataset behind
    return path


def read_report(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Report {path} does not exist. Create one with python -m alignment.evaluate.")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"Report {path} is not valid JSON ({exc.msg}).") from exc
    rows = report.get("rows") if isinstance(report, dict) else None
    if not isinstance(rows, list):
        raise ValueError(f"Report {path} has no 'rows' list; is it an alignment.evaluate report?")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or row.get("label") not in ("harmful", "benign") or "prompt" not in row \
                or not isinstance(row.get("base"), dict):
            raise ValueError(f"Report {path}: row {i + 1} lacks prompt, label or base answer.")
        for side in ("base", "aligned"):
            if side in row and not {"response", "refused"} <= set(row[side]):
                raise ValueError(f"Report {path}: row {i + 1} {side} answer lacks response or refused.")
    return report


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m alignment.refusal_data",
                                     description="Build refusal preference pairs from red-team failures.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--report", help="An alignment.evaluate JSON report.")
    source.add_argument("--model", help="Evaluate this model on the built-in suites first (e.g. bundled).")
    parser.add_argument("--adapter", help="With --model: evaluate this adapter and learn from its failures.")
    parser.add_argument("--output", required=True, help="Pairs JSONL (TRL conversational preference format).")
    parser.add_argument("--split", choices=("train", "heldout"), help="Only rows of this split (use train).")
    parser.add_argument("--side", choices=("base", "aligned"), help="Whose failures (default: aligned if present).")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--report-output", help="With --model: also save the evaluation report here.")
    args = parser.parse_args(argv)

    from alignment.evaluate import EvalSettings, EvaluationError, ProgressPrinter, attach_adapter, evaluate
    from alignment.models import LoadSettings, ModelLoadError, load_model
    from alignment.redteam import SuiteError, default_cases
    from alignment.settings import SettingsError

    loaded = None
    try:
        if args.report:
            rows = read_report(args.report)["rows"]
        else:
            from alignment.evaluate import write_report

            loaded = load_model(LoadSettings(model=args.model))
            adapter = attach_adapter(loaded, args.adapter) if args.adapter else None
            cases = default_cases(split=args.split)
            print(f"Evaluating {len(cases)} built-in cases on {loaded.name}...", file=sys.stderr)
            report = evaluate(loaded, cases, adapter=adapter, settings=EvalSettings(
                max_new_tokens=args.max_new_tokens, capability=False), on_progress=ProgressPrinter())
            report["meta"].update(model=args.model, adapter=args.adapter)
            if args.report_output:
                write_report(report, args.report_output)
            rows = report["rows"]
        side = _side(rows, args.side)
        helpful: dict[str, str] = {}
        if loaded is not None:
            from alignment.judge import load_judge

            helpful = sample_helpful_answers(loaded, rows, load_judge("rules"), side=side)
        pairs, stats = pairs_from_rows(rows, side=side, split=args.split, helpful=helpful)
        write_jsonl(pairs, args.output)
    except KeyboardInterrupt:
        print("\nInterrupted: no pairs were written.", file=sys.stderr)
        return 130
    except (ValueError, SuiteError, SettingsError, ModelLoadError, EvaluationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Wrote {stats['pairs']} pairs to {args.output} ({side} failures: {stats['harmful_complied']} harmful "
          f"complied, {stats['benign_refused']} benign refused; skipped: {stats['skipped_empty_answer']} empty "
          f"answers, {stats['skipped_no_helpful_answer']} refused benign prompts with no helpful answer, "
          f"{stats['skipped_split']} rows of another split).")
    if not pairs and not stats["skipped_empty_answer"]:
        print("No failures to learn from: the model refused every harmful prompt and answered every benign one.",
              file=sys.stderr)
    elif not pairs:
        print("No pairs: the model's answers were empty. Check the model, or raise --max-new-tokens.",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
