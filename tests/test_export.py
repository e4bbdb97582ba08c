"""Tests for labeling.export: vote resolution, TRL preference rows, file writing, the CLI, and that the exported
file trains one DPO step as-is.

Run: ALIGN_CACHE_DIR=/tmp/aligncache .venv/bin/python -m pytest tests/test_export.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from labeling.export import ExportError, build_preference_rows, build_rows_with_reasons, export, main
from labeling.records import LabelRecord, PairRecord
from labeling.store import LabelStore
from tests.conftest import train_one_dpo_step


def pair(i: int, category: str = "violence", intended: str = "harmful") -> PairRecord:
    return PairRecord(prompt=[{"role": "system", "content": "Be helpful."},
                              {"role": "user", "content": f"question {i}"}],
                      response_a=f"answer A{i}", response_b=f"answer B{i} is longer", strategy="two_samples",
                      model_a="bundled", model_b="bundled", category=category, intended_label=intended, seed=i)


def vote(p: PairRecord, labeler: str, choice: str, rewrite: str | None = None, left: str = "a",
         kind: str = "label") -> LabelRecord:
    return LabelRecord(pair_id=p.pair_id, labeler=labeler, choice=choice, left=left, rewrite=rewrite, kind=kind)


@pytest.fixture
def store(tmp_path: Path) -> LabelStore:
    return LabelStore(tmp_path / "data", k=3)


def rows_by_pair(store: LabelStore, **kwargs) -> dict[str, dict]:
    return {row["pair_id"]: row for row in build_preference_rows(store, **kwargs)}


def test_single_votes_become_conversational_rows(store: LabelStore) -> None:
    p0, p1 = pair(0), pair(1, category="coding", intended="benign")
    store.add_pairs([p0, p1])
    store.record_label(vote(p0, "ana", "a"))
    store.record_label(vote(p1, "ana", "b", left="b"))
    rows = build_preference_rows(store)
    assert [row["pair_id"] for row in rows] == [p0.pair_id, p1.pair_id]
    first, second = rows
    assert first["prompt"] == p0.prompt
    assert first["chosen"] == [{"role": "assistant", "content": "answer A0"}]
    assert first["rejected"] == [{"role": "assistant", "content": "answer B0 is longer"}]
    assert second["chosen"][0]["content"] == "answer B1 is longer"
    assert second["rejected"][0]["content"] == "answer A1"
    assert (second["category"], second["intended_label"], second["strategy"], second["model_a"],
            second["model_b"]) == ("coding", "benign", "two_samples", "bundled", "bundled")
    assert first["votes"] == {"a": 1, "b": 0, "tie": 0, "both_bad": 0}
    assert first["labelers"] == ["ana"] and first["agreement"] == 1.0


def test_majority_wins_and_agreement_is_the_majority_share(store: LabelStore) -> None:
    p = pair(0)
    store.add_pairs([p])
    for name, choice in [("ana", "b"), ("bo", "b"), ("cy", "a")]:
        store.record_label(vote(p, name, choice))
    (row,) = build_preference_rows(store)
    assert row["chosen"][0]["content"] == p.response_b
    assert row["votes"] == {"a": 1, "b": 2, "tie": 0, "both_bad": 0}
    assert row["labelers"] == ["ana", "bo", "cy"]
    assert row["agreement"] == pytest.approx(2 / 3)


def test_ties_both_bad_and_splits_are_left_out_without_a_rewrite(store: LabelStore) -> None:
    tie, both_bad, split, few = pair(0), pair(1), pair(2), pair(3)
    store.add_pairs([tie, both_bad, split, few])
    store.record_label(vote(tie, "ana", "tie"))
    store.record_label(vote(tie, "bo", "tie"))
    store.record_label(vote(both_bad, "ana", "both_bad"))
    store.record_label(vote(both_bad, "bo", "both_bad"))
    store.record_label(vote(split, "ana", "a"))
    store.record_label(vote(split, "bo", "b"))
    store.record_label(vote(few, "ana", "a"))
    rows, reasons = build_rows_with_reasons(store, min_votes=2)
    assert rows == []
    assert reasons == {"tie": 1, "both_bad": 1, "split": 1, "too_few_votes": 1}
    assert [row["pair_id"] for row in build_preference_rows(store)] == [few.pair_id]


def test_rewrites_become_the_chosen_answer(store: LabelStore) -> None:
    on_a, on_both_bad, on_tie, on_split, minority = pair(0), pair(1), pair(2), pair(3), pair(4)
    store.add_pairs([on_a, on_both_bad, on_tie, on_split, minority])
    store.record_label(vote(on_a, "ana", "a", rewrite="I can't help with that, but here is a safe option."))
    store.record_label(vote(on_both_bad, "ana", "both_bad", rewrite="A careful answer."))
    store.record_label(vote(on_tie, "ana", "tie", rewrite="answer A2"))  # the rewrite just copies A
    store.record_label(vote(on_split, "ana", "b", rewrite="A better B."))
    store.record_label(vote(on_split, "bo", "a"))
    store.record_label(vote(minority, "ana", "a"))
    store.record_label(vote(minority, "bo", "a"))
    store.record_label(vote(minority, "cy", "b", rewrite="ignored: the majority chose A"))
    rows = rows_by_pair(store)
    assert rows[on_a.pair_id]["chosen"][0]["content"].startswith("I can't help")
    assert rows[on_a.pair_id]["rejected"][0]["content"] == on_a.response_b
    assert rows[on_both_bad.pair_id]["chosen"][0]["content"] == "A careful answer."
    assert rows[on_both_bad.pair_id]["rejected"][0]["content"] == on_both_bad.response_a
    assert rows[on_tie.pair_id]["rejected"][0]["content"] == on_tie.response_b
    assert rows[on_split.pair_id]["chosen"][0]["content"] == "A better B."
    assert rows[on_split.pair_id]["rejected"][0]["content"] == on_split.response_a
    assert rows[minority.pair_id]["chosen"][0]["content"] == minority.response_a
    assert all(rows[p.pair_id]["rewritten"] for p in (on_a, on_both_bad, on_tie, on_split))
    assert not rows[minority.pair_id]["rewritten"]


def test_retracted_labels_do_not_count_and_people_count_once(store: LabelStore, tmp_path: Path) -> None:
    p = pair(0)
    store.add_pairs([p])
    store.record_label(vote(p, "ana", "a"))
    store.undo_last("ana")
    assert build_preference_rows(store) == []
    # Two active labels by one person can only arrive by syncing two machines; the later one counts.
    merged = LabelStore(tmp_path / "merged")
    first, second = vote(p, "ana", "a"), vote(p, "ana", "b")
    second.created_at = first.created_at + 1
    events = [{"type": "pair", "id": p.pair_id, **p.to_dict()}] + [
        {"type": "label", "id": label.label_id, **label.to_dict()} for label in (first, second)]
    merged.import_events(events)
    assert len(merged.active_labels()) == 2
    (row,) = build_preference_rows(merged)
    assert row["votes"] == {"a": 0, "b": 1, "tie": 0, "both_bad": 0} and row["labelers"] == ["ana"]


def test_blind_votes_count_only_when_asked(store: LabelStore) -> None:
    p = pair(0)
    store.add_pairs([p])
    store.record_label(vote(p, "ana", "b", kind="vote"))
    assert build_preference_rows(store) == []
    (row,) = build_preference_rows(store, include_votes=True)
    assert row["chosen"][0]["content"] == p.response_b


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_export_writes_a_file_datasets_reads_back(store: LabelStore, tmp_path: Path, suffix: str) -> None:
    import datasets

    pairs = [pair(i) for i in range(4)]
    store.add_pairs(pairs)
    for p in pairs:
        store.record_label(vote(p, "ana", "a", left="b"))
    store.record_label(vote(pairs[0], "bo", "tie"))  # a 1-1 split on pair 0 is left out
    out = tmp_path / "out" / f"prefs{suffix}"
    count, report = export(store, out)
    assert count == 3 and report["rows"] == 3
    assert report["left_out"] == {"split": 1}
    assert report["position_bias"]["left_votes"] == 0 and report["position_bias"]["decisive_votes"] == 4
    loaded = datasets.load_dataset(suffix.lstrip(".").replace("jsonl", "json"), data_files=str(out), split="train")
    assert loaded.num_rows == 3
    assert loaded[0]["chosen"] == [{"role": "assistant", "content": "answer A1"}]
    assert loaded[0]["prompt"] == pairs[1].prompt
    assert loaded[0]["votes"] == {"a": 1, "b": 0, "tie": 0, "both_bad": 0}
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left behind


def test_export_refuses_other_suffixes_and_empty_stores(store: LabelStore, tmp_path: Path) -> None:
    p = pair(0)
    store.add_pairs([p])
    with pytest.raises(ExportError, match="No usable labels"):
        export(store, tmp_path / "prefs.jsonl")
    store.record_label(vote(p, "ana", "a"))
    with pytest.raises(ExportError, match=r"\.jsonl or \.parquet"):
        export(store, tmp_path / "prefs.csv")
    with pytest.raises(ExportError, match="min-votes"):
        export(store, tmp_path / "prefs.jsonl", min_votes=2)
    assert not (tmp_path / "prefs.jsonl").exists() and not (tmp_path / "prefs.csv").exists()


def test_cli_exports_and_prints_the_summary(store: LabelStore, tmp_path: Path, capsys) -> None:
    p = pair(0)
    store.add_pairs([p])
    store.record_label(vote(p, "<b>ana</b>", "b"))
    out = tmp_path / "prefs.jsonl"
    assert main(["--data-dir", str(store.data_dir), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Exported 1 preference rows" in printed and "Votes by labeler: <b>ana</b> 1" in printed
    row = json.loads(out.read_text().splitlines()[0])
    assert row["chosen"][0]["content"] == p.response_b


def test_cli_exits_2_without_a_store_or_usable_labels(tmp_path: Path, capsys) -> None:
    assert main(["--data-dir", str(tmp_path / "nowhere"), "--output", str(tmp_path / "x.jsonl")]) == 2
    assert "no label store" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()  # looking did not create an empty store
    LabelStore(tmp_path / "empty").add_pairs([pair(0)])
    assert main(["--data-dir", str(tmp_path / "empty"), "--output", str(tmp_path / "x.jsonl")]) == 2
    assert "No usable labels" in capsys.readouterr().err
    assert main(["--data-dir", str(tmp_path / "empty"), "--output", str(tmp_path / "x.jsonl"),
                 "--min-votes", "0"]) == 2
    assert "min_votes" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_exported_file_trains_one_dpo_step(store: LabelStore, tmp_path: Path, suffix: str, tiny_model_dir,
                                           bundled_tokenizer, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    pairs = [pair(i) for i in range(4)]
    store.add_pairs(pairs)
    for i, p in enumerate(pairs):
        store.record_label(vote(p, "ana", "ab"[i % 2], rewrite="Sorry, I can't help; try this." if i == 0 else None))
    out = tmp_path / f"prefs{suffix}"
    assert export(store, out)[0] == 4

    dataset = datasets.load_dataset(suffix.lstrip(".").replace("jsonl", "json"), data_files=str(out), split="train")
    trainer = train_one_dpo_step(dataset, tiny_model_dir, bundled_tokenizer, tmp_path / "run", max_length=64)
    assert trainer.state.global_step == 1
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses and math.isfinite(losses[0])
