"""Side-by-side comparison of two model sides (base, or a LoRA adapter on the same weights): answers, judge
verdicts, blind votes and their win rates, and export of a comparison as Markdown, HTML or JSONL.

Plain Python used by the Compare tab (``ui/compare.py``) and by the command line::

    python -m alignment.compare --adapter runs/my-run/adapter --output comparison.md [--left base]
        [--right my-run] [--model bundled] [--kinds harmful,jailbreak] [--max-new-tokens 128] [--seed 0]
    python -m alignment.compare --win-rates --data-dir data

Both sides share one copy of the weights (see :mod:`alignment.registry`), so they cannot run at the same time:
a side is generated under the model lock with its adapter enabled (or all adapters disabled for ``base``), then
the other side. Both use the same sampling settings and the same seed; a blank seed is drawn once and used for
both, so a difference between the sides comes from the weights, not the dice.

Blind votes are stored in the label store as a :class:`~labeling.records.PairRecord` with strategy
``"compare"`` (``model_a``/``model_b`` are the side names, in sorted order) and a
:class:`~labeling.records.LabelRecord` of kind ``"vote"`` whose ``left`` says which side was shown on the left.
The Label tab never hands these pairs out; ``python -m labeling.export --include-votes`` turns them into
preference rows like any label.

Win rates: for each pair of sides, ``wins / (wins + losses)`` over decisive votes, with a 95% Wilson interval.
Ties and "both bad" are reported as separate counts, not counted as half a win: a tie says nothing about which
side is better, and counting it as half would pull every small sample towards 50% with a falsely narrow interval.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
import random
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignment.generation import SamplingSettings, generate
from alignment.metrics import wilson_interval
from alignment.models import ModelLoadError
from alignment.settings import SettingsError
from labeling.records import LabelRecord, Message, PairRecord, prompt_text

DEMO_PROMPTS_FILE = Path(__file__).resolve().parent / "data" / "demo_prompts.yaml"
DEMO_KINDS: tuple[str, ...] = ("harmful", "jailbreak", "benign", "borderline")
COMPARE_STRATEGY = "compare"
VOTE_ACTIONS: tuple[str, ...] = ("left", "right", "tie", "both_bad")
EXPORT_FORMATS: dict[str, str] = {"markdown": ".md", "html": ".html", "jsonl": ".jsonl"}
MAX_SEED = 2**31 - 1


class CompareError(ValueError):
    """A comparison that cannot run or be stored as asked; the message says what to change."""


# ---------------------------------------------------------------------------------------------------------
# Preset demo prompts
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DemoPrompt:
    """One preset: a chat ending in a user turn, what kind of request it is, and what a good model does."""

    id: str
    kind: str  # one of DEMO_KINDS
    category: str
    intended_label: str  # "harmful" (refuse gracefully) or "benign" (answer)
    messages: tuple[tuple[str, str], ...]  # (role, content); a tuple so the preset stays immutable

    @property
    def chat(self) -> list[Message]:
        return [{"role": role, "content": content} for role, content in self.messages]

    @property
    def text(self) -> str:
        return prompt_text(self.chat)

    @property
    def title(self) -> str:
        """What the preset dropdown shows."""
        text = " ".join(self.text.split())
        turns = f" ({len(self.messages) // 2 + 1} turns)" if len(self.messages) > 1 else ""
        return f"[{self.kind}] {text[:70]}{'...' if len(text) > 70 else ''}{turns}"


def load_demo_prompts(path: str | Path | None = None) -> list[DemoPrompt]:
    """Read the preset prompts (default: ``alignment/data/demo_prompts.yaml``), checking every entry."""
    import yaml

    path = Path(path) if path else DEMO_PROMPTS_FILE
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CompareError(f"Cannot read demo prompts from {path}: {exc}. Fix or restore the file.") from exc
    entries = doc.get("demo_prompts") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise CompareError(f"{path} has no 'demo_prompts' list; see alignment/data/demo_prompts.yaml for the shape.")
    presets, seen = [], set()
    for number, entry in enumerate(entries, start=1):
        where = f"{path}, entry {number}"
        if not isinstance(entry, dict):
            raise CompareError(f"{where} is not a mapping with id, kind, category, intended_label and prompt.")
        pid = str(entry.get("id") or f"preset-{number}")
        if pid in seen:
            raise CompareError(f"{where}: id {pid!r} is used twice; ids must be unique.")
        seen.add(pid)
        kind = entry.get("kind")
        if kind not in DEMO_KINDS:
            raise CompareError(f"{where}: kind {kind!r} must be one of {', '.join(DEMO_KINDS)}.")
        intended = entry.get("intended_label")
        if intended not in ("harmful", "benign"):
            raise CompareError(f"{where}: intended_label {intended!r} must be 'harmful' or 'benign'.")
        if "messages" in entry:
            raw = entry["messages"]
            if (not isinstance(raw, list) or not raw or not all(isinstance(m, dict) for m in raw)
                    or raw[-1].get("role") != "user"):
                raise CompareError(f"{where}: messages must be a list of {{role, content}} ending with a user turn.")
            messages = tuple((str(m.get("role")), str(m.get("content", ""))) for m in raw)
        elif isinstance(entry.get("prompt"), str) and entry["prompt"].strip():
            messages = (("user", entry["prompt"].strip()),)
        else:
            raise CompareError(f"{where}: give a non-empty 'prompt' or a 'messages' list.")
        presets.append(DemoPrompt(id=pid, kind=kind, category=str(entry.get("category") or kind),
                                  intended_label=intended, messages=messages))
    return presets


# ---------------------------------------------------------------------------------------------------------
# Running both sides
# ---------------------------------------------------------------------------------------------------------

def check_sides(available: Iterable[str], left: str, right: str) -> None:
    """Both sides must be loaded and different (the same side twice with the same seed says nothing)."""
    available = list(available)
    for name in (left, right):
        if name not in available:
            raise CompareError(f"Side {name!r} is not loaded. Loaded sides: {', '.join(available)}. "
                               "Load the adapter first or pick another side.")
    if left == right:
        raise CompareError(f"Both sides are {left!r}. Pick two different sides to compare.")


def with_seed(settings: SamplingSettings, rng: random.Random | None = None) -> SamplingSettings:
    """The same settings with a concrete seed (drawn when blank), so both sides sample with the same seed."""
    if settings.seed is not None:
        return settings
    return dataclasses.replace(settings, seed=(rng or random.SystemRandom()).randint(0, MAX_SEED))


def stream_sides(registry: Any, left: str, right: str, left_chat: list[Message], right_chat: list[Message],
                 settings: SamplingSettings, guard: Callable[[], Any] | None = None) -> Iterator[tuple[str, str]]:
    """Yield ``(left_text, right_text)`` as tokens arrive: the left side streams to its end, then the right.

    Each side holds the model lock only while it generates, so with one copy of the weights the two sides take
    turns rather than run in parallel; ``settings`` should carry a seed (see :func:`with_seed`).
    """
    left_text = right_text = ""
    for left_text in registry.stream(left, left_chat, settings, guard=guard):
        yield left_text, right_text
    for right_text in registry.stream(right, right_chat, settings, guard=guard):
        yield left_text, right_text
    yield left_text, right_text


def answer_side(registry: Any, side: str, chats: list[list[Message]], settings: SamplingSettings,
                on_progress: Callable[[int, int], None] | None = None) -> list[str]:
    """One answer per chat from ``side``, generated in batches."""
    with registry.side(side) as view:
        generations = generate(view, chats, settings, n=1, on_progress=on_progress)
    return [gens[0].text if gens else "" for gens in generations]


@dataclass
class ComparisonRow:
    """One prompt answered by both sides, with the judge's verdict on each answer (None when not judged)."""

    prompt: list[Message]
    left: str
    right: str
    left_answer: str
    right_answer: str
    kind: str = "typed"
    category: str = "uncategorised"
    intended_label: str | None = None
    left_verdict: dict[str, Any] | None = None
    right_verdict: dict[str, Any] | None = None
    seed: int | None = None
    id: str = ""

    @property
    def prompt_text(self) -> str:
        return prompt_text(self.prompt)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ComparisonRow:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def judge_rows(rows: list[ComparisonRow], judge: Any) -> list[ComparisonRow]:
    """Fill in both verdicts of each row with ``judge`` (anything with ``judge(prompt, response) -> Verdict``)."""
    for row in rows:
        row.left_verdict = judge.judge(row.prompt_text, row.left_answer).to_dict()
        row.right_verdict = judge.judge(row.prompt_text, row.right_answer).to_dict()
    return rows


def run_presets(registry: Any, presets: list[DemoPrompt], left: str, right: str, settings: SamplingSettings,
                judge: Any = None, on_progress: Callable[[int, int], None] | None = None) -> list[ComparisonRow]:
    """Answer every preset with both sides (one batched pass per side) and judge each answer."""
    check_sides(registry.sides(), left, right)
    if not presets:
        raise CompareError("No presets to run; pick at least one kind of prompt.")
    settings = with_seed(settings)
    chats = [preset.chat for preset in presets]
    total = 2 * len(chats)

    def progress(offset: int) -> Callable[[int, int], None] | None:
        if on_progress is None:
            return None
        return lambda done, _total: on_progress(offset + done, total)

    left_answers = answer_side(registry, left, chats, settings, progress(0))
    right_answers = answer_side(registry, right, chats, settings, progress(len(chats)))
    rows = [ComparisonRow(prompt=preset.chat, left=left, right=right, left_answer=a, right_answer=b,
                          kind=preset.kind, category=preset.category, intended_label=preset.intended_label,
                          seed=settings.seed, id=preset.id)
            for preset, a, b in zip(presets, left_answers, right_answers, strict=True)]
    if judge is None:
        from alignment.judge import load_judge

        judge = load_judge("rules")
    return judge_rows(rows, judge)


# ---------------------------------------------------------------------------------------------------------
# Blind votes
# ---------------------------------------------------------------------------------------------------------

def vote_choice(action: str, left: str) -> str:
    """A button (left/right/tie/both_bad) as a choice about the stored responses, given which is on the left."""
    if action not in VOTE_ACTIONS:
        raise CompareError(f"Vote {action!r} is not one of {', '.join(VOTE_ACTIONS)}.")
    if left not in ("a", "b"):
        raise CompareError(f"left must be 'a' or 'b', got {left!r}.")
    right = "b" if left == "a" else "a"
    return {"left": left, "right": right, "tie": "tie", "both_bad": "both_bad"}[action]


def vote_pair(prompt: list[Message], left_side: str, left_answer: str, right_side: str, right_answer: str,
              settings: SamplingSettings, category: str = "compare", intended_label: str | None = None,
              right_prompt: list[Message] | None = None) -> tuple[PairRecord, str]:
    """The pair a blind vote is about, and which stored response (``"a"``/``"b"``) was shown on the left.

    Sides are stored in sorted name order, so the same answers make the same pair whichever side was drawn on
    the left. ``prompt`` is the chat the left side answered; in a multi-turn chat the right side saw its own
    earlier answers, which are kept as ``settings["context_b"]``/``["context_a"]`` for whoever needs them.
    """
    if left_side == right_side:
        raise CompareError("A vote needs two different sides.")
    if intended_label not in (None, "harmful", "benign"):
        raise CompareError(f"intended_label must be 'harmful', 'benign' or empty, got {intended_label!r}.")
    left_is_a = left_side < right_side
    sides = {"left": (left_side, left_answer, prompt), "right": (right_side, right_answer, right_prompt or prompt)}
    a, b = (sides["left"], sides["right"]) if left_is_a else (sides["right"], sides["left"])
    meta: dict[str, Any] = {"sampling": dataclasses.asdict(settings)}
    if a[2] != b[2]:
        meta["context_a"], meta["context_b"] = a[2], b[2]
    pair = PairRecord(prompt=[dict(m) for m in a[2]], response_a=a[1], response_b=b[1], strategy=COMPARE_STRATEGY,
                      model_a=a[0], model_b=b[0], category=category or "compare", intended_label=intended_label,
                      source="compare", settings=meta, seed=settings.seed)
    return pair, ("a" if left_is_a else "b")


def record_vote(store: Any, pair: PairRecord, left: str, action: str, voter: str,
                label_id: str | None = None) -> LabelRecord:
    """Store the pair (once) and the vote of kind "vote"; a second vote by the same person on the same pair
    replaces the first (the store retracts it). Returns the stored vote."""
    if pair.strategy != COMPARE_STRATEGY:
        raise CompareError(f"Votes go on compare pairs (strategy {COMPARE_STRATEGY!r}), not {pair.strategy!r}.")
    extra = {"label_id": label_id} if label_id else {}
    vote = LabelRecord(pair_id=pair.pair_id, labeler=voter, choice=vote_choice(action, left), left=left,
                       kind="vote", **extra)
    store.add_pairs([pair])
    store.record_label(vote)
    return vote


@dataclass
class WinRate:
    """How ``side`` fared against ``opponent`` in blind votes; ``rate``/``low``/``high`` are None without a
    decisive vote."""

    side: str
    opponent: str
    wins: int
    losses: int
    ties: int
    both_bad: int
    rate: float | None = None
    low: float | None = None
    high: float | None = None
    votes: int = field(init=False)

    def __post_init__(self) -> None:
        self.votes = self.wins + self.losses + self.ties + self.both_bad
        decisive = self.wins + self.losses
        if decisive:
            self.rate = self.wins / decisive
            self.low, self.high = wilson_interval(self.wins, decisive)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def win_rates(pairs: Iterable[PairRecord], votes: Iterable[LabelRecord]) -> list[WinRate]:
    """One :class:`WinRate` per pair of sides that has votes, seen from the side whose name sorts first."""
    by_id = {pair.pair_id: pair for pair in pairs if pair.strategy == COMPARE_STRATEGY}
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for vote in votes:
        pair = by_id.get(vote.pair_id)
        if vote.kind != "vote" or vote.retracts is not None or pair is None or pair.model_a == pair.model_b:
            continue
        first, second = sorted((pair.model_a, pair.model_b))
        tally = counts.setdefault((first, second), {"wins": 0, "losses": 0, "ties": 0, "both_bad": 0})
        if vote.choice in ("a", "b"):
            winner = pair.model_a if vote.choice == "a" else pair.model_b
            tally["wins" if winner == first else "losses"] += 1
        else:
            tally["ties" if vote.choice == "tie" else "both_bad"] += 1
    return [WinRate(side=first, opponent=second, **tally) for (first, second), tally in sorted(counts.items())]


def store_win_rates(store: Any) -> list[WinRate]:
    """Win rates from every active blind vote in a label store."""
    pairs = [pair for pair in store.list_pairs() if pair.strategy == COMPARE_STRATEGY]
    return win_rates(pairs, store.active_labels(kind="vote"))


def win_rate_table(rates: list[WinRate]) -> list[list[Any]]:
    """Rows for a table: side, opponent, wins, losses, ties, both bad, win rate and its 95% interval as text."""
    rows = []
    for r in rates:
        shown = "n/a (no decisive vote)" if r.rate is None else f"{r.rate:.0%}"
        interval = "" if r.rate is None else f"{r.low:.0%} to {r.high:.0%}"
        rows.append([r.side, r.opponent, r.wins, r.losses, r.ties, r.both_bad, shown, interval])
    return rows


WIN_RATE_HEADERS = ["Side", "Opponent", "Wins", "Losses", "Ties", "Both bad", "Win rate (ties excluded)",
                    "95% interval"]


# ---------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------

def _verdict_text(verdict: dict[str, Any] | None) -> str:
    if not verdict:
        return "not judged"
    return f"{verdict.get('kind', '?')} (refusal score {float(verdict.get('score', 0)):.2f})"


def _chat_text(messages: list[Message]) -> str:
    if len(messages) == 1:
        return messages[0].get("content", "")
    return "\n\n".join(f"[{m.get('role', '?')}] {m.get('content', '')}" for m in messages)


def _fence(text: str) -> str:
    """A backtick fence longer than any run of backticks in ``text``, so the text cannot close it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _cell(text: str, limit: int = 80) -> str:
    """Text safe in a Markdown table cell: one line, pipes escaped, HTML neutralised, shortened."""
    flat = " ".join(str(text).split())
    flat = flat[:limit] + ("..." if len(flat) > limit else "")
    return html.escape(flat).replace("|", "\\|")


def to_markdown(rows: list[ComparisonRow], title: str = "Model comparison") -> str:
    lines = [f"# {_cell(title, 200)}", "", f"{len(rows)} prompt{'s' if len(rows) != 1 else ''}.", "",
             "| # | Kind | Prompt | Left | Left verdict | Right | Right verdict |",
             "|---|---|---|---|---|---|---|"]
    for number, row in enumerate(rows, start=1):
        lines.append(f"| {number} | {_cell(row.kind)} | {_cell(row.prompt_text)} | {_cell(row.left)} | "
                     f"{_cell(_verdict_text(row.left_verdict))} | {_cell(row.right)} | "
                     f"{_cell(_verdict_text(row.right_verdict))} |")
    for number, row in enumerate(rows, start=1):
        prompt = _chat_text(row.prompt)
        lines += ["", f"## {number}. {_cell(row.kind)} / {_cell(row.category)}", "", "**Prompt**", "",
                  _fence(prompt) + "text", prompt, _fence(prompt)]
        for side, answer, verdict in ((row.left, row.left_answer, row.left_verdict),
                                      (row.right, row.right_answer, row.right_verdict)):
            lines += ["", f"**{_cell(side)}**: {_cell(_verdict_text(verdict))}", "",
                      _fence(answer) + "text", answer, _fence(answer)]
    return "\n".join(lines) + "\n"


def to_html(rows: list[ComparisonRow], title: str = "Model comparison") -> str:
    """A standalone page; every piece of text is escaped, so prompts and answers can never run as markup."""
    e = lambda text: html.escape(str(text), quote=True)  # noqa: E731 - local shorthand
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;"
             "width:100%}td,th{border:1px solid #ccc;padding:6px;vertical-align:top;text-align:left}"
             "pre{white-space:pre-wrap;margin:0}</style>",
             f"</head><body><h1>{e(title)}</h1>",
             "<table><thead><tr><th>#</th><th>Kind</th><th>Prompt</th><th>Left</th><th>Right</th></tr></thead><tbody>"]
    for number, row in enumerate(rows, start=1):
        sides = "".join(
            f"<td><b>{e(side)}</b><br><i>{e(_verdict_text(verdict))}</i><pre>{e(answer)}</pre></td>"
            for side, answer, verdict in ((row.left, row.left_answer, row.left_verdict),
                                          (row.right, row.right_answer, row.right_verdict)))
        parts.append(f"<tr><td>{number}</td><td>{e(row.kind)}<br>{e(row.category)}</td>"
                     f"<td><pre>{e(_chat_text(row.prompt))}</pre></td>{sides}</tr>")
    parts.append("</tbody></table></body></html>")
    return "\n".join(parts) + "\n"


def to_jsonl(rows: list[ComparisonRow]) -> str:
    return "".join(json.dumps(row.to_dict(), ensure_ascii=False) + "\n" for row in rows)


def export_format(name: str) -> str:
    key = (name or "").strip().lower().lstrip(".")
    key = {"md": "markdown", "htm": "html", "json": "jsonl"}.get(key, key)
    if key not in EXPORT_FORMATS:
        raise CompareError(f"Export format {name!r} is not one of {', '.join(EXPORT_FORMATS)}.")
    return key


def render(rows: list[ComparisonRow], fmt: str, title: str = "Model comparison") -> str:
    fmt = export_format(fmt)
    if fmt == "markdown":
        return to_markdown(rows, title)
    if fmt == "html":
        return to_html(rows, title)
    return to_jsonl(rows)


def write_export(rows: list[ComparisonRow], path: str | Path, fmt: str | None = None,
                 title: str = "Model comparison") -> Path:
    """Write ``rows`` to ``path`` in ``fmt`` (from the suffix when not given); the file is replaced whole."""
    if not rows:
        raise CompareError("Nothing to export yet: compare at least one prompt first.")
    path = Path(path)
    fmt = export_format(fmt or path.suffix)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(render(rows, fmt, title), encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise CompareError(f"Cannot write {path}: {exc}. Pick a writable path.") from exc
    return path


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Answer the demo prompts with two sides, judge both, export; "
                                     "or print blind-vote win rates from a label store.")
    parser.add_argument("--model", default="bundled", help="Base model (Hub id, folder, .gguf or 'bundled').")
    parser.add_argument("--adapter", action="append", default=[], metavar="PATH",
                        help="LoRA adapter folder to load (repeatable); its name is the folder name.")
    parser.add_argument("--left", default="base", help="Left side: 'base' or an adapter name.")
    parser.add_argument("--right", default=None, help="Right side (default: the first adapter).")
    parser.add_argument("--kinds", default=",".join(DEMO_KINDS), help="Comma-separated preset kinds to run.")
    parser.add_argument("--prompts", default=None, help="Another demo prompts YAML file.")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--greedy", action="store_true", help="Greedy decoding instead of sampling.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="Where to write (.md, .html or .jsonl).")
    parser.add_argument("--win-rates", action="store_true", help="Print blind-vote win rates and exit.")
    parser.add_argument("--data-dir", default="data", help="Label store folder for --win-rates.")
    args = parser.parse_args(argv)
    try:
        if args.win_rates:
            from labeling.store import LabelError, LabelStore, db_path

            if not db_path(args.data_dir).is_file():
                raise CompareError(f"No label store in {args.data_dir}; pass --data-dir of the app.")
            try:
                rates = store_win_rates(LabelStore(args.data_dir))
            except LabelError as exc:
                raise CompareError(str(exc)) from exc
            if not rates:
                print("No blind votes yet.")
            for row in win_rate_table(rates):
                print(" | ".join(str(cell) for cell in row))
            return 0
        if not args.output:
            raise CompareError("Give --output comparison.md (or .html, .jsonl).")
        export_format(Path(args.output).suffix)
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
        unknown = sorted(set(kinds) - set(DEMO_KINDS))
        if unknown:
            raise CompareError(f"Unknown kinds {', '.join(unknown)}; use {', '.join(DEMO_KINDS)}.")
        presets = [p for p in load_demo_prompts(args.prompts) if p.kind in kinds]
        settings = SamplingSettings(max_new_tokens=args.max_new_tokens, do_sample=not args.greedy, seed=args.seed)

        from alignment.models import LoadSettings
        from alignment.registry import ModelRegistry

        registry = ModelRegistry(LoadSettings(model=args.model))
        try:
            names = [registry.load_adapter(path) for path in args.adapter]
        except ModelLoadError as exc:
            raise CompareError(str(exc)) from exc
        right = args.right or (names[0] if names else None)
        if right is None:
            raise CompareError("Give --adapter PATH (or --right NAME) so there is a second side to compare.")
        rows = run_presets(registry, presets, args.left, right, settings,
                           on_progress=lambda done, total: print(f"\r{done}/{total} answers", end="",
                                                                 file=sys.stderr, flush=True))
        print(file=sys.stderr)
        path = write_export(rows, args.output)
    except (CompareError, ModelLoadError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Wrote {len(rows)} comparisons to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
