"""Turn stored labels into a TRL preference dataset (conversational ``prompt`` / ``chosen`` / ``rejected``).

Each labeled pair becomes at most one row. Several labels on a pair are resolved by majority; ties, "both bad"
and split votes are left out unless someone wrote a better answer, which then becomes the chosen response. A
rewrite on an "a" or "b" label replaces the chosen text. Each person counts once per pair.

Run:
    python -m labeling.export --data-dir data --output prefs.jsonl [--min-votes 2] [--include-votes]

The file (.jsonl or .parquet) loads with ``datasets.load_dataset("json"|"parquet", data_files=...)`` and goes
straight into ``trl.DPOTrainer``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from labeling.records import CHOICES, LabelRecord, PairRecord
from labeling.store import VOTE_ONLY_STRATEGIES, LabelError, LabelStore, db_path

EXPORT_SUFFIXES = (".jsonl", ".parquet")


class ExportError(ValueError):
    """Nothing usable to export, or a destination we cannot write; the message says what to do."""


def _latest_per_labeler(labels: list[LabelRecord]) -> list[LabelRecord]:
    """One vote per person per pair: their most recent (labels arrive oldest first)."""
    latest: dict[str, LabelRecord] = {}
    for label in labels:
        latest[label.labeler] = label
    return list(latest.values())


def resolve_pair(pair: PairRecord, labels: list[LabelRecord]) -> tuple[dict[str, Any] | None, str]:
    """The preference row for one pair and its active labels, or None and the reason it is left out."""
    labels = _latest_per_labeler(labels)
    votes = Counter({choice: 0 for choice in CHOICES})
    votes.update(label.choice for label in labels)
    total = sum(votes.values())
    top = max(votes.values())
    leaders = [choice for choice in CHOICES if votes[choice] == top]
    majority = leaders[0] if len(leaders) == 1 else None
    texts = {"a": pair.response_a, "b": pair.response_b}
    other = {"a": "b", "b": "a"}

    if majority in ("a", "b"):
        rewrites = [label.rewrite for label in labels if label.choice == majority and label.rewrite]
        chosen = rewrites[-1] if rewrites else texts[majority]
        rejected = texts[other[majority]]
        resolution = "majority"
    else:
        rewrites = [label for label in labels if label.rewrite]
        if not rewrites:
            reason = {"tie": "tie", "both_bad": "both_bad"}.get(majority or "", "split")
            return None, reason
        last = rewrites[-1]
        chosen = last.rewrite
        if last.choice in ("a", "b"):
            rejected = texts[other[last.choice]]  # the writer judged the other side worse
        else:
            # Tie or both bad: neither original is preferred, so reject A unless the rewrite merely copies it.
            rejected = pair.response_a if pair.response_a.strip() != chosen.strip() else pair.response_b
        resolution = "rewrite"

    row = {
        "prompt": [dict(message) for message in pair.prompt],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "pair_id": pair.pair_id,
        "category": pair.category,
        "intended_label": pair.intended_label,
        "strategy": pair.strategy,
        "model_a": pair.model_a,
        "model_b": pair.model_b,
        "votes": dict(votes),
        "labelers": sorted(label.labeler for label in labels),
        "agreement": top / total,
        "rewritten": bool(rewrites),
        "resolution": resolution,
    }
    return row, "exported"


def build_rows_with_reasons(
    store: LabelStore, min_votes: int = 1, include_votes: bool = False
) -> tuple[list[dict[str, Any]], Counter]:
    """Rows plus a count of why pairs were left out ("unlabeled", "too_few_votes", "tie", "both_bad", "split")."""
    if isinstance(min_votes, bool) or not isinstance(min_votes, int) or min_votes < 1:
        raise ExportError(f"min_votes must be a whole number of at least 1, got {min_votes!r}.")
    labels = store.active_labels(kind="label")
    if include_votes:
        labels += store.active_labels(kind="vote")
        labels.sort(key=lambda label: label.created_at)
    by_pair: dict[str, list[LabelRecord]] = {}
    for label in labels:
        by_pair.setdefault(label.pair_id, []).append(label)
    rows: list[dict[str, Any]] = []
    reasons: Counter = Counter()
    for pair in store.list_pairs():
        pair_labels = by_pair.get(pair.pair_id, [])
        if not include_votes and pair.strategy in VOTE_ONLY_STRATEGIES:
            reasons["compare_votes_not_included"] += 1
            continue
        if not pair_labels:
            reasons["unlabeled"] += 1
            continue
        if len(_latest_per_labeler(pair_labels)) < min_votes:
            reasons["too_few_votes"] += 1
            continue
        row, reason = resolve_pair(pair, pair_labels)
        reasons[reason] += 1
        if row is not None:
            rows.append(row)
    return rows, reasons


def build_preference_rows(store: LabelStore, min_votes: int = 1, include_votes: bool = False) -> list[dict[str, Any]]:
    """TRL conversational preference rows with metadata, one per resolved pair, in pair order.

    ``min_votes``: pairs with fewer distinct labelers are left out. ``include_votes``: also count blind-compare
    votes (label kind "vote"), not only Label-tab labels.
    """
    return build_rows_with_reasons(store, min_votes, include_votes)[0]


def write_rows(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write rows as .jsonl or .parquet through a temporary file renamed into place, so a reader never sees a
    half-written file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in EXPORT_SUFFIXES:
        raise ExportError(f"Cannot export to {path.name!r}: the file name must end in .jsonl or .parquet.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"Cannot create the folder {path.parent}: {exc}. Pick a writable output path.") from exc
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if suffix == ".jsonl":
            with tmp.open("w", encoding="utf-8") as handle:
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        else:
            import datasets

            datasets.Dataset.from_list(rows).to_parquet(str(tmp))
        os.replace(tmp, path)
    except OSError as exc:
        raise ExportError(f"Cannot write {path}: {exc}. Check the folder exists and is writable.") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def export(
    store: LabelStore, path: str | Path, min_votes: int = 1, include_votes: bool = False
) -> tuple[int, dict[str, Any]]:
    """Write the preference dataset to ``path`` (.jsonl or .parquet). Returns (rows written, quality report).
    Raises ExportError when no pair resolves to a row."""
    from labeling.quality import quality_report

    rows, reasons = build_rows_with_reasons(store, min_votes, include_votes)
    if not rows:
        details = ", ".join(f"{count} {reason.replace('_', ' ')}" for reason, count in sorted(reasons.items()))
        raise ExportError(
            "No usable labels to export"
            + (f" ({details})" if details else " (the store has no pairs)")
            + ". Label some pairs with a clear winner (A or B), or write a better answer for ties and both-bad,"
            + (" or lower --min-votes." if reasons.get("too_few_votes") else ".")
        )
    write_rows(rows, path)
    labels = store.active_labels(kind="label")
    if include_votes:
        labels += store.active_labels(kind="vote")
    report = quality_report(rows, labels)
    report["left_out"] = dict(reasons - Counter({"exported": reasons["exported"]}))
    return len(rows), report


def main(argv: list[str] | None = None) -> int:
    from labeling.quality import format_quality_summary

    parser = argparse.ArgumentParser(prog="python -m labeling.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="folder holding labels.sqlite")
    parser.add_argument("--output", required=True, help="file to write: .jsonl or .parquet")
    parser.add_argument("--min-votes", type=int, default=1, help="leave out pairs with fewer labelers (default 1)")
    parser.add_argument("--include-votes", action="store_true", help="also count blind-compare votes")
    args = parser.parse_args(argv)
    if not db_path(args.data_dir).is_file():
        print(f"error: no label store at {db_path(args.data_dir)}. Point --data-dir at the folder the app "
              "saves labels in (it holds labels.sqlite).", file=sys.stderr)
        return 2
    try:
        store = LabelStore(args.data_dir)
        count, report = export(store, args.output, min_votes=args.min_votes, include_votes=args.include_votes)
    except (ExportError, LabelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Exported {count} preference rows to {args.output}.")
    if report.get("left_out"):
        print("Left out: " + ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in sorted(report["left_out"].items())))
    print(format_quality_summary(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
