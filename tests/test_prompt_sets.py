"""Built-in prompt sets: sizes, valid categories and labels, no duplicates, no benign/harmful overlap."""

from __future__ import annotations

import json
import re

import pytest

from labeling.prompt_sets import (
    HARMFUL_CATEGORIES,
    PROMPTS_DIR,
    PromptSetError,
    describe_sets,
    list_sets,
    load_set,
    load_sets,
    read_set,
)
from labeling.records import PromptRecord


def _normal(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", " ".join(text.lower().split()))


def test_list_sets_names_the_three_shipped_sets():
    assert {"benign", "harmful", "risky_benign"} <= set(list_sets())


@pytest.mark.parametrize("name,minimum", [("benign", 160), ("harmful", 160), ("risky_benign", 50)])
def test_set_sizes(name, minimum):
    assert len(load_set(name)) >= minimum


def test_every_row_has_the_documented_shape():
    for path in PROMPTS_DIR.glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            assert set(row) == {"prompt", "category", "intended_label", "risky"}, path.name
            assert isinstance(row["prompt"], str) and row["prompt"].strip()
            assert row["intended_label"] in ("benign", "harmful")
            assert isinstance(row["risky"], bool)


def test_labels_and_risky_flags_match_the_set():
    assert {r.intended_label for r in read_set("benign")} == {"benign"}
    assert not any(r.risky for r in read_set("benign"))
    assert {r.intended_label for r in read_set("harmful")} == {"harmful"}
    assert {r.intended_label for r in read_set("risky_benign")} == {"benign"}
    assert all(r.risky for r in read_set("risky_benign"))


def test_harmful_covers_every_design_category_and_nothing_else():
    cats = [r.category for r in read_set("harmful")]
    assert set(cats) == set(HARMFUL_CATEGORIES)
    for category in HARMFUL_CATEGORIES:
        assert cats.count(category) >= 10, category


def test_benign_categories_include_the_task_api_kinds():
    cats = {r.category for r in read_set("benign")}
    assert {"task_create", "task_schedule", "task_prioritise", "task_summarise", "everyday"} <= cats
    assert not cats & set(HARMFUL_CATEGORIES)


def test_no_duplicates_within_or_across_sets():
    seen: dict[str, str] = {}
    for name in list_sets():
        for row in read_set(name):
            key = _normal(row.prompt)
            assert key not in seen, f"{row.prompt!r} in {name} duplicates one in {seen[key]}"
            seen[key] = name


def test_benign_and_harmful_do_not_overlap():
    benign = {_normal(r.prompt) for r in read_set("benign")} | {_normal(r.prompt) for r in read_set("risky_benign")}
    harmful = {_normal(r.prompt) for r in read_set("harmful")}
    assert not benign & harmful


def test_wording_and_length_vary():
    for name in ("benign", "harmful"):
        words = [len(r.prompt.split()) for r in read_set(name)]
        assert min(words) <= 6 and max(words) >= 25, name
        openers = {r.prompt.split()[0].lower() for r in read_set(name)}
        assert len(openers) >= 15, name


def test_load_set_returns_prompt_records_with_source_and_label():
    records = load_set("harmful", limit=5)
    assert len(records) == 5
    assert all(isinstance(r, PromptRecord) for r in records)
    assert all(r.source == "builtin:harmful" and r.intended_label == "harmful" for r in records)
    assert records[0].messages == [{"role": "user", "content": read_set("harmful")[0].prompt}]


def test_load_set_filters_categories():
    records = load_set("harmful", categories=["malware", "fraud"])
    assert records and {r.category for r in records} == {"malware", "fraud"}


def test_load_set_seed_shuffles_reproducibly_before_limit():
    a = [r.text for r in load_set("benign", limit=20, seed=3)]
    b = [r.text for r in load_set("benign", limit=20, seed=3)]
    c = [r.text for r in load_set("benign", limit=20, seed=4)]
    unshuffled = [r.text for r in load_set("benign", limit=20)]
    assert a == b
    assert a != c
    assert a != unshuffled


def test_unknown_set_or_category_is_a_clear_error():
    with pytest.raises(PromptSetError, match="Available sets"):
        load_set("nope")
    with pytest.raises(PromptSetError, match="categories"):
        load_set("harmful", categories=["malwear"])
    with pytest.raises(PromptSetError):
        load_set("../records")


def test_load_sets_combines_and_applies_limit_per_set():
    records = load_sets(["benign", "harmful"], limit=4)
    assert [r.intended_label for r in records] == ["benign"] * 4 + ["harmful"] * 4
    only_malware = load_sets(["benign", "harmful"], categories=["malware"])
    assert only_malware and {r.category for r in only_malware} == {"malware"}


def test_describe_sets_counts_match():
    summary = {row["name"]: row for row in describe_sets()}
    assert summary["risky_benign"]["prompts"] == len(read_set("risky_benign"))
    assert summary["risky_benign"]["risky"] is True
