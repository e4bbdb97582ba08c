"""Built-in prompt sets shipped with the project, for generating preference pairs without any upload.

Each set is a JSONL file under ``labeling/data/prompts/`` with rows
``{"prompt", "category", "intended_label": "benign"|"harmful", "risky": bool}``:

- ``benign``: legitimate Task-API and productivity requests and everyday questions.
- ``harmful``: harmful task requests across the red-team categories (violence_weapons, self_harm, ...).
- ``risky_benign``: benign requests that only look risky ("kill the stuck deploy process").

These are training prompts; the red-team evaluation suites under ``alignment/data/redteam/`` are written
separately so evaluation stays independent of what the model was trained on.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from labeling.records import INTENDED_LABELS, PromptRecord, as_messages

PROMPTS_DIR = Path(__file__).resolve().parent / "data" / "prompts"
HARMFUL_CATEGORIES: tuple[str, ...] = (
    "violence_weapons", "self_harm", "illegal_activity", "privacy_stalking", "harassment", "hate", "fraud",
    "malware",
)


class PromptSetError(ValueError):
    """A prompt set name or filter does not exist; the message lists what does."""


@dataclass(frozen=True)
class BuiltinPrompt:
    """One row of a built-in set, as stored."""

    prompt: str
    category: str
    intended_label: str
    risky: bool

    def to_record(self, set_name: str) -> PromptRecord:
        return PromptRecord(messages=as_messages(self.prompt), category=self.category,
                            intended_label=self.intended_label, source=f"builtin:{set_name}")


def list_sets() -> list[str]:
    """Names of the built-in sets, sorted."""
    return sorted(path.stem for path in PROMPTS_DIR.glob("*.jsonl"))


def _set_path(name: str) -> Path:
    path = PROMPTS_DIR / f"{name}.jsonl"
    if not name or "/" in name or "\\" in name or not path.is_file():
        raise PromptSetError(f"There is no built-in prompt set {name!r}. Available sets: {', '.join(list_sets())}.")
    return path


def read_set(name: str) -> list[BuiltinPrompt]:
    """All rows of a set in file order, checked for the row shape."""
    path = _set_path(name)
    rows: list[BuiltinPrompt] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        data = json.loads(line)
        if data.get("intended_label") not in INTENDED_LABELS:
            raise PromptSetError(f"{path.name} line {number}: intended_label must be benign or harmful.")
        rows.append(BuiltinPrompt(prompt=str(data["prompt"]).strip(), category=str(data["category"]),
                                  intended_label=data["intended_label"], risky=bool(data.get("risky", False))))
    return rows


def set_categories(name: str) -> list[str]:
    """Categories used in a set, sorted, for filter menus."""
    return sorted({row.category for row in read_set(name)})


def describe_sets() -> list[dict[str, object]]:
    """One summary row per set (name, prompt count, labels, categories) for tables and ``--help``."""
    summary = []
    for name in list_sets():
        rows = read_set(name)
        summary.append({
            "name": name,
            "prompts": len(rows),
            "intended_labels": sorted({r.intended_label for r in rows}),
            "risky": any(r.risky for r in rows),
            "categories": sorted({r.category for r in rows}),
        })
    return summary


def load_set(name: str, limit: int | None = None, categories: Iterable[str] | None = None,
             seed: int | None = None) -> list[PromptRecord]:
    """Prompts of one set as PromptRecords (source ``builtin:<name>``).

    ``categories`` keeps only those categories (unknown names are an error, so a typo never silently gives an
    empty set). ``seed`` shuffles reproducibly before ``limit`` is applied, so a limited sample spans categories;
    without a seed the file order is kept.
    """
    rows = read_set(name)
    if categories is not None:
        wanted = set(categories)
        known = {row.category for row in rows}
        unknown = sorted(wanted - known)
        if unknown:
            raise PromptSetError(f"Set {name!r} has no categor{'y' if len(unknown) == 1 else 'ies'} "
                                 f"{', '.join(unknown)}. Its categories: {', '.join(sorted(known))}.")
        rows = [row for row in rows if row.category in wanted]
    if seed is not None:
        rows = list(rows)
        random.Random(seed).shuffle(rows)
    if limit is not None:
        if limit < 0:
            raise PromptSetError(f"limit is {limit}; use a positive number or leave it empty for the whole set.")
        rows = rows[:limit]
    return [row.to_record(name) for row in rows]


def load_sets(names: Iterable[str], limit: int | None = None, categories: Iterable[str] | None = None,
              seed: int | None = None) -> list[PromptRecord]:
    """Several sets one after another; ``limit`` applies per set, ``categories`` to whichever sets have them."""
    names = list(names)
    wanted = set(categories) if categories is not None else None
    if wanted is not None:
        known = set().union(*(set_categories(n) for n in names)) if names else set()
        unknown = sorted(wanted - known)
        if unknown:
            raise PromptSetError(f"No chosen set has categor{'y' if len(unknown) == 1 else 'ies'} "
                                 f"{', '.join(unknown)}. Known: {', '.join(sorted(known))}.")
    records: list[PromptRecord] = []
    for name in names:
        cats = None if wanted is None else sorted(wanted & set(set_categories(name)))
        if cats == []:
            continue
        records.extend(load_set(name, limit=limit, categories=cats, seed=seed))
    return records
