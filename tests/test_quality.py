"""Tests for labeling.quality against values worked out by hand.

Run: .venv/bin/python -m pytest tests/test_quality.py
"""

from __future__ import annotations

from pathlib import Path

import pytest

from labeling.export import build_preference_rows
from labeling.quality import (
    agreement_report,
    cohens_kappa,
    fleiss_kappa,
    format_quality_summary,
    quality_report,
    wilson_interval,
)
from labeling.records import LabelRecord, PairRecord
from labeling.store import LabelStore


def labels_from(table: dict[str, dict[str, str]]) -> list[LabelRecord]:
    """{pair_id: {labeler: choice}} -> labels."""
    return [LabelRecord(pair_id=pair_id, labeler=name, choice=choice, left="a")
            for pair_id, votes in table.items() for name, choice in votes.items()]


def test_wilson_interval_matches_hand_computation() -> None:
    # 7 of 10, z = 1.96: centre (0.7 + 0.19208) / 1.38416 = 0.64449,
    # half-width 1.96 * sqrt(0.021 + 0.009604) / 1.38416 = 0.24772.
    low, high = wilson_interval(7, 10)
    assert low == pytest.approx(0.64449 - 0.24772, abs=2e-4)
    assert high == pytest.approx(0.64449 + 0.24772, abs=2e-4)
    assert wilson_interval(0, 0) is None
    low, high = wilson_interval(0, 5)
    assert low == 0.0 and 0.4 < high < 0.5  # 3.8415/8.8415 = 0.4345


def test_cohens_kappa_matches_hand_computation() -> None:
    # Observed 4/5 = 0.8. Marginals: rater 1 a 2, b 2, tie 1; rater 2 a 1, b 3, tie 1.
    # Expected (2*1 + 2*3 + 1*1) / 25 = 0.36; kappa (0.8 - 0.36) / 0.64 = 0.6875.
    first = ["a", "a", "b", "b", "tie"]
    second = ["a", "b", "b", "b", "tie"]
    assert cohens_kappa(first, second) == pytest.approx(0.6875)
    assert cohens_kappa(["a", "a"], ["a", "a"]) is None  # no variation: kappa undefined
    assert cohens_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        cohens_kappa(["a"], [])


def test_fleiss_kappa_matches_hand_computation() -> None:
    # Three raters, categories (a, b, tie, both_bad). Per-item agreement P_i = (sum n_ij^2 - 3) / 6:
    # [3,0,0,0] -> 1, [2,1,0,0] -> 1/3, [0,3,0,0] -> 1, [1,1,1,0] -> 0; mean 7/12.
    # Category shares a 6/12, b 5/12, tie 1/12; expected 36/144 + 25/144 + 1/144 = 31/72.
    # kappa = (7/12 - 31/72) / (1 - 31/72) = 11/41.
    table = [[3, 0, 0, 0], [2, 1, 0, 0], [0, 3, 0, 0], [1, 1, 1, 0]]
    assert fleiss_kappa(table) == pytest.approx(11 / 41)
    with pytest.raises(ValueError):
        fleiss_kappa([[3, 0, 0, 0], [1, 1, 0, 0]])


def test_agreement_uses_cohen_for_two_labelers() -> None:
    table = {f"p{i}": {"ana": x, "bo": y} for i, (x, y) in enumerate(
        zip(["a", "a", "b", "b", "tie"], ["a", "b", "b", "b", "tie"], strict=True))}
    table["solo"] = {"ana": "a"}  # no overlap: not part of agreement
    report = agreement_report(labels_from(table))
    assert report["method"] == "cohen" and report["labelers"] == ["ana", "bo"]
    assert report["pairs_with_overlap"] == 5 and report["kappa_items"] == 5
    assert report["kappa"] == pytest.approx(0.6875)
    assert report["percent_agreement"] == pytest.approx(0.8)


def test_agreement_uses_fleiss_for_more_labelers() -> None:
    table = {
        "p1": {"ana": "a", "bo": "a", "cy": "a"},
        "p2": {"ana": "a", "bo": "a", "dee": "b"},
        "p3": {"bo": "b", "cy": "b", "dee": "b"},
        "p4": {"ana": "a", "cy": "b", "dee": "tie"},
        "p5": {"ana": "a", "bo": "b"},  # two raters: in percent agreement, not in the 3-rater kappa
    }
    report = agreement_report(labels_from(table))
    assert report["method"] == "fleiss" and report["raters_per_pair"] == 3
    assert report["kappa_items"] == 4 and report["pairs_with_overlap"] == 5
    assert report["kappa"] == pytest.approx(11 / 41)
    # Per-pair agreement 1, 1/3, 1, 0, 0 -> mean 7/15.
    assert report["percent_agreement"] == pytest.approx(7 / 15)
    assert agreement_report([])["kappa"] is None


def _pair(i: int, a: str, b: str, category: str, intended: str, prompt: str | None = None) -> PairRecord:
    return PairRecord(prompt=[{"role": "user", "content": prompt or f"prompt {i}"}], response_a=a, response_b=b,
                      strategy="two_samples", model_a="m", model_b="m", category=category, intended_label=intended,
                      seed=i)


def test_quality_report_on_a_store(tmp_path: Path) -> None:
    store = LabelStore(tmp_path, k=1)
    pairs = [_pair(i, "short", "a much longer answer", "violence", "harmful") for i in range(8)]
    pairs.append(_pair(8, "same", "same", "coding", "benign"))
    pairs.append(_pair(9, "x", "yy", "coding", "benign", prompt="prompt 0"))  # repeats pair 0's prompt
    store.add_pairs(pairs)
    for p in pairs[:8]:  # always picks B, and B is always shown on the left
        store.record_label(LabelRecord(pair_id=p.pair_id, labeler="ana", choice="b", left="b"))
    store.record_label(LabelRecord(pair_id=pairs[8].pair_id, labeler="bo", choice="a", left="b"))
    store.record_label(LabelRecord(pair_id=pairs[9].pair_id, labeler="bo", choice="a", left="a"))

    report = quality_report(store)
    assert report["rows"] == 10
    assert report["by_category"] == {"coding": {"rows": 2, "share": 0.2}, "violence": {"rows": 8, "share": 0.8}}
    assert report["by_intended_label"]["harmful"] == {"rows": 8, "share": 0.8}
    assert report["duplicate_prompts"] == {"prompts": 1, "extra_rows": 1}
    assert report["identical_chosen_rejected"] == 1
    assert report["chosen_longer"] == {"longer": 8, "shorter": 1, "equal": 1, "share": 0.8}
    bias = report["position_bias"]
    assert (bias["left_votes"], bias["decisive_votes"]) == (9, 10)
    assert bias["share_left"] == 0.9
    assert bias["ci95"] == pytest.approx(list(wilson_interval(9, 10)))
    assert report["votes_by_labeler"] == {"ana": {"a": 0, "b": 8, "tie": 0, "both_bad": 0, "total": 8},
                                          "bo": {"a": 2, "b": 0, "tie": 0, "both_bad": 0, "total": 2}}
    assert report["agreement"]["pairs_with_overlap"] == 0
    warnings = " ".join(report["warnings"])
    assert "identical" in warnings and "position bias" in warnings and "more than one row" in warnings

    # The same report from exported rows and their labels.
    rows = build_preference_rows(store)
    assert quality_report(rows, store.active_labels(kind="label")) == report

    summary = format_quality_summary(report)
    assert "Rows: 10" in summary and "Left side picked in 9/10" in summary and "Warning:" in summary


def test_quality_report_on_nothing() -> None:
    report = quality_report([], [])
    assert report["rows"] == 0 and report["position_bias"]["share_left"] is None
    assert report["chosen_longer"]["share"] is None and report["warnings"] == []
    assert "Rows: 0" in format_quality_summary(report)
