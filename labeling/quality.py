"""Quality report for a preference dataset: balance, duplicates, length and position bias, agreement.

``quality_report(store)`` or ``quality_report(rows, labels)`` returns a JSON-able dict; ``format_quality_summary``
turns it into a few lines for the command line. Agreement uses Cohen's kappa when exactly two people labeled the
overlapping pairs and Fleiss' kappa when more did. Position bias is the share of decisive votes (A or B) that went
to the response shown on the left, with a 95% Wilson interval; a fair labeler sits near 0.5.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

from labeling.records import CHOICES, LabelRecord, prompt_key

Z95 = 1.959963984540054


def wilson_interval(successes: int, total: int, z: float = Z95) -> tuple[float, float] | None:
    """95% Wilson score interval for a proportion; None when there are no trials."""
    if total <= 0:
        return None
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def cohens_kappa(first: list[str], second: list[str]) -> float | None:
    """Cohen's kappa for two raters over the same items; None when chance agreement is 1 (no variation)."""
    if len(first) != len(second) or not first:
        raise ValueError("Cohen's kappa needs two equally long, non-empty lists of ratings.")
    n = len(first)
    observed = sum(x == y for x, y in zip(first, second, strict=True)) / n
    first_counts, second_counts = Counter(first), Counter(second)
    expected = sum(first_counts[c] * second_counts[c] for c in first_counts) / (n * n)
    if expected == 1:
        return None
    return (observed - expected) / (1 - expected)


def fleiss_kappa(table: list[list[int]]) -> float | None:
    """Fleiss' kappa from an items x categories table of counts, every item rated by the same number of raters.
    None when chance agreement is 1."""
    if not table:
        raise ValueError("Fleiss' kappa needs at least one item.")
    raters = sum(table[0])
    if raters < 2 or any(sum(row) != raters for row in table):
        raise ValueError("Fleiss' kappa needs the same number (at least 2) of ratings on every item.")
    items = len(table)
    per_item = [(sum(c * c for c in row) - raters) / (raters * (raters - 1)) for row in table]
    observed = sum(per_item) / items
    shares = [sum(row[j] for row in table) / (items * raters) for j in range(len(table[0]))]
    expected = sum(s * s for s in shares)
    if expected == 1:
        return None
    return (observed - expected) / (1 - expected)


def _pairwise_agreement(choices: list[str]) -> float:
    """Share of rater pairs on one item that agree."""
    n = len(choices)
    return sum(c * (c - 1) for c in Counter(choices).values()) / (n * (n - 1))


def agreement_report(labels: Iterable[LabelRecord]) -> dict[str, Any]:
    """Percent agreement and kappa over pairs labeled by two or more people (one vote per person per pair)."""
    per_pair: dict[str, dict[str, str]] = {}
    for label in labels:  # oldest first, so a later vote by the same person wins
        per_pair.setdefault(label.pair_id, {})[label.labeler] = label.choice
    overlapping = {pair_id: votes for pair_id, votes in per_pair.items() if len(votes) >= 2}
    report: dict[str, Any] = {"pairs_with_overlap": len(overlapping), "percent_agreement": None,
                              "method": None, "kappa": None, "kappa_items": 0, "labelers": []}
    if not overlapping:
        return report
    report["percent_agreement"] = sum(_pairwise_agreement(list(v.values())) for v in overlapping.values()) / len(
        overlapping)
    people = sorted({name for votes in overlapping.values() for name in votes})
    report["labelers"] = people
    if len(people) == 2:
        first = [votes[people[0]] for votes in overlapping.values()]
        second = [votes[people[1]] for votes in overlapping.values()]
        report.update(method="cohen", kappa=cohens_kappa(first, second), kappa_items=len(first))
    else:
        # Fleiss needs a fixed number of raters per item: use the most common count (the larger on a tie).
        sizes = Counter(len(votes) for votes in overlapping.values())
        raters = max(sizes, key=lambda size: (sizes[size], size))
        table = [[Counter(votes.values())[c] for c in CHOICES] for votes in overlapping.values()
                 if len(votes) == raters]
        report.update(method="fleiss", kappa=fleiss_kappa(table), kappa_items=len(table), raters_per_pair=raters)
    return report


def _share_table(values: list[str]) -> dict[str, dict[str, float]]:
    counts = Counter(values)
    total = len(values)
    return {key: {"rows": n, "share": n / total} for key, n in sorted(counts.items())}


def _content(messages: list[dict[str, str]]) -> str:
    return messages[-1]["content"] if messages else ""


def quality_report(source: Any, labels: Iterable[LabelRecord] | None = None) -> dict[str, Any]:
    """Quality of a preference dataset.

    ``source`` is a LabelStore (rows are built with the default export settings and its Label-tab labels are
    used) or a list of exported rows, in which case ``labels`` are the active labels behind them.
    """
    from labeling.store import LabelStore

    if isinstance(source, LabelStore):
        from labeling.export import build_preference_rows

        rows = build_preference_rows(source)
        labels = source.active_labels(kind="label") if labels is None else labels
    else:
        rows = list(source)
    labels = list(labels or [])
    report: dict[str, Any] = {"rows": len(rows)}

    report["by_category"] = _share_table([row.get("category") or "uncategorised" for row in rows])
    report["by_intended_label"] = _share_table([row.get("intended_label") or "unknown" for row in rows])

    keys = Counter(prompt_key(row["prompt"]) for row in rows)
    repeated = {key: n for key, n in keys.items() if n > 1}
    report["duplicate_prompts"] = {"prompts": len(repeated), "extra_rows": sum(n - 1 for n in repeated.values())}

    chosen = [_content(row["chosen"]) for row in rows]
    rejected = [_content(row["rejected"]) for row in rows]
    report["identical_chosen_rejected"] = sum(c.strip() == r.strip() for c, r in zip(chosen, rejected, strict=True))
    longer = sum(len(c) > len(r) for c, r in zip(chosen, rejected, strict=True))
    shorter = sum(len(c) < len(r) for c, r in zip(chosen, rejected, strict=True))
    report["chosen_longer"] = {"longer": longer, "shorter": shorter, "equal": len(rows) - longer - shorter,
                               "share": longer / len(rows) if rows else None}

    decisive = [label for label in labels if label.choice in ("a", "b")]
    left_votes = sum(label.choice == label.left for label in decisive)
    interval = wilson_interval(left_votes, len(decisive))
    report["position_bias"] = {"left_votes": left_votes, "decisive_votes": len(decisive),
                               "share_left": left_votes / len(decisive) if decisive else None,
                               "ci95": list(interval) if interval else None}

    report["agreement"] = agreement_report(labels)

    by_labeler: dict[str, dict[str, int]] = {}
    for label in labels:
        counts = by_labeler.setdefault(label.labeler, {choice: 0 for choice in CHOICES} | {"total": 0})
        counts[label.choice] += 1
        counts["total"] += 1
    report["votes_by_labeler"] = dict(sorted(by_labeler.items()))
    report["warnings"] = _warnings(report)
    return report


def _warnings(report: dict[str, Any]) -> list[str]:
    notes = []
    rows = report["rows"]
    if report["identical_chosen_rejected"]:
        notes.append(f"{report['identical_chosen_rejected']} rows have identical chosen and rejected answers; "
                     "they teach nothing.")
    if report["duplicate_prompts"]["prompts"]:
        notes.append(f"{report['duplicate_prompts']['prompts']} prompts appear in more than one row "
                     f"({report['duplicate_prompts']['extra_rows']} extra rows).")
    share = report["chosen_longer"]["share"]
    if rows >= 10 and share is not None and (share > 0.8 or share < 0.2):
        notes.append(f"The chosen answer is the longer one in {share:.0%} of rows; the model may learn length, "
                     "not quality.")
    bias = report["position_bias"]
    if bias["ci95"] and (bias["ci95"][0] > 0.5 or bias["ci95"][1] < 0.5):
        notes.append(f"Labelers picked the left side in {bias['share_left']:.0%} of A/B votes (95% CI "
                     f"{bias['ci95'][0]:.0%}-{bias['ci95'][1]:.0%}); position bias is likely.")
    intended = report["by_intended_label"]
    harmful = intended.get("harmful", {}).get("share", 0.0)
    if rows >= 10 and "unknown" not in intended and (harmful < 0.2 or harmful > 0.8):
        notes.append(f"Only {harmful:.0%} of rows are harmful prompts" if harmful < 0.2 else
                     f"{harmful:.0%} of rows are harmful prompts; add benign ones or the model may refuse everything.")
    kappa = report["agreement"]["kappa"]
    if kappa is not None and report["agreement"]["kappa_items"] >= 5 and kappa < 0.4:
        notes.append(f"Labelers agree little ({report['agreement']['method']} kappa {kappa:.2f}); "
                     "revisit the guidelines.")
    return notes


def format_quality_summary(report: dict[str, Any]) -> str:
    """A few human-readable lines for the command line."""
    lines = [f"Rows: {report['rows']}"]
    if report["by_category"]:
        lines.append("By category: " + ", ".join(f"{k} {v['rows']}" for k, v in report["by_category"].items()))
        lines.append("By intended label: " + ", ".join(
            f"{k} {v['rows']} ({v['share']:.0%})" for k, v in report["by_intended_label"].items()))
    if report["chosen_longer"]["share"] is not None:
        lines.append(f"Chosen is the longer answer in {report['chosen_longer']['share']:.0%} of rows")
    bias = report["position_bias"]
    if bias["share_left"] is not None:
        lines.append(f"Left side picked in {bias['left_votes']}/{bias['decisive_votes']} A/B votes "
                     f"({bias['share_left']:.0%}, 95% CI {bias['ci95'][0]:.0%}-{bias['ci95'][1]:.0%})")
    agreement = report["agreement"]
    if agreement["pairs_with_overlap"]:
        kappa = agreement["kappa"]
        lines.append(f"Agreement on {agreement['pairs_with_overlap']} shared pairs: "
                     f"{agreement['percent_agreement']:.0%}, {agreement['method']} kappa "
                     + ("n/a" if kappa is None else f"{kappa:.2f}"))
    else:
        lines.append("Agreement: no pair has two labelers yet")
    lines.append("Votes by labeler: " + ", ".join(
        f"{name} {counts['total']}" for name, counts in report["votes_by_labeler"].items()))
    lines += [f"Warning: {note}" for note in report["warnings"]]
    return "\n".join(lines)
