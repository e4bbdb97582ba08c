"""Tests for labeling.store: no label lost, counted twice or credited to the wrong person.

Run: .venv/bin/python -m pytest tests/test_store.py
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from labeling.records import LabelRecord, PairRecord
from labeling.store import DB_FILENAME, SCHEMA_VERSION, LabelError, LabelStore, validate_labeler

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_pairs(count: int, category: str = "harmful", strategy: str = "two_samples") -> list[PairRecord]:
    return [
        PairRecord(prompt=[{"role": "user", "content": f"prompt {i}"}], response_a=f"answer A {i}",
                   response_b=f"answer B {i}", strategy=strategy, model_a="bundled", model_b="bundled",
                   category=category, intended_label="harmful" if category == "harmful" else "benign", seed=i)
        for i in range(count)
    ]


def label_through_queue(store: LabelStore, labeler: str, count: int) -> list[str]:
    """Label ``count`` pairs the way the UI does; return the label ids the store acknowledged."""
    acknowledged = []
    for _ in range(count):
        assignment = store.next_pair(labeler)
        assert assignment is not None, f"{labeler} ran out of pairs"
        label = LabelRecord(pair_id=assignment.pair.pair_id, labeler=labeler, choice="a", left=assignment.left)
        assert store.record_label(label)
        acknowledged.append(label.label_id)
    return acknowledged


def _label_in_process(data_dir: str, labelers: list[str], count: int, k: int, results, ready, go) -> None:
    """Runs in a second process (spawned) while the test process labels too."""
    store = LabelStore(data_dir, k=k)
    ready.set()
    go.wait(120)
    for labeler in labelers:
        results.put((labeler, label_through_queue(store, labeler, count)))


@pytest.fixture
def store(tmp_path: Path) -> LabelStore:
    store = LabelStore(tmp_path, k=1)
    store.add_pairs(make_pairs(5))
    return store


def test_new_store_is_current_schema_in_wal_mode(tmp_path: Path) -> None:
    store = LabelStore(tmp_path)
    assert (tmp_path / DB_FILENAME).is_file()
    assert store.schema_version() == SCHEMA_VERSION
    conn = sqlite3.connect(tmp_path / DB_FILENAME)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # synchronous is per connection: check the store's own connection acknowledges writes with FULL (2).
    assert store._conn().execute("PRAGMA synchronous").fetchone()[0] == 2
    assert store._conn().execute("PRAGMA busy_timeout").fetchone()[0] > 0


def test_add_pairs_is_idempotent_and_round_trips(tmp_path: Path) -> None:
    store = LabelStore(tmp_path)
    pairs = make_pairs(3) + make_pairs(2, category="benign", strategy="reference")
    assert store.add_pairs(pairs) == 5
    assert store.add_pairs(pairs) == 0
    assert store.count_pairs() == 5
    assert store.get_pair(pairs[0].pair_id) == pairs[0]
    assert store.get_pair("missing") is None
    assert [p.pair_id for p in store.list_pairs(category="benign")] == [p.pair_id for p in pairs[3:]]
    assert len(store.list_pairs(limit=2)) == 2
    assert store.paired_prompt_keys("reference", "bundled") == {p.prompt_key for p in pairs[3:]}
    assert store.paired_prompt_keys("reference", "other-model") == set()


def test_add_pairs_is_atomic(tmp_path: Path) -> None:
    store = LabelStore(tmp_path)
    bad = make_pairs(1)[0]
    bad.response_b = None  # type: ignore[assignment]
    with pytest.raises(LabelError):
        store.add_pairs(make_pairs(3) + [bad])
    assert store.count_pairs() == 0


def test_resubmitting_a_label_stores_it_once(store: LabelStore) -> None:
    pair = store.list_pairs()[0]
    label = LabelRecord(pair_id=pair.pair_id, labeler="ana", choice="b", left="a")
    assert store.record_label(label) is True
    assert store.record_label(label) is False
    again = LabelRecord(**label.to_dict())
    assert store.record_label(again) is False
    assert [lab.label_id for lab in store.all_events()] == [label.label_id]


def test_same_label_id_with_different_content_is_refused(store: LabelStore) -> None:
    pair = store.list_pairs()[0]
    label = LabelRecord(pair_id=pair.pair_id, labeler="ana", choice="b", left="a")
    store.record_label(label)
    forged = LabelRecord(pair_id=pair.pair_id, labeler="bo", choice="a", left="a", label_id=label.label_id)
    with pytest.raises(LabelError, match="already stored for a different label"):
        store.record_label(forged)
    assert [lab.labeler for lab in store.active_labels()] == ["ana"]


def test_unknown_pair_is_refused_with_a_clear_message(store: LabelStore) -> None:
    with pytest.raises(LabelError, match="not in the label store"):
        store.record_label(LabelRecord(pair_id="no-such-pair", labeler="ana", choice="a", left="a"))
    assert store.all_events() == []


def test_labeling_twice_on_one_pair_counts_once(store: LabelStore) -> None:
    pair = store.list_pairs()[0]
    first = LabelRecord(pair_id=pair.pair_id, labeler="ana", choice="a", left="a")
    second = LabelRecord(pair_id=pair.pair_id, labeler="ana", choice="b", left="a")
    store.record_label(first)
    store.record_label(second)
    assert [(lab.label_id, lab.choice) for lab in store.active_labels()] == [(second.label_id, "b")]
    events = store.all_events()
    assert [e.label_id for e in events[:2]] == [first.label_id, second.label_id]
    assert events[2].retracts == first.label_id


def test_undo_appends_a_retraction_and_keeps_history(store: LabelStore) -> None:
    first = store.next_pair("ana")
    label1 = LabelRecord(pair_id=first.pair.pair_id, labeler="ana", choice="a", left=first.left)
    store.record_label(label1)
    second = store.next_pair("ana")
    label2 = LabelRecord(pair_id=second.pair.pair_id, labeler="ana", choice="tie", left=second.left)
    store.record_label(label2)
    store.record_label(LabelRecord(pair_id=first.pair.pair_id, labeler="bo", choice="b", left="b"))

    undone = store.undo_last("ana")
    assert undone.label_id == label2.label_id
    assert {lab.label_id for lab in store.active_labels()} == {label1.label_id} | {
        lab.label_id for lab in store.active_labels() if lab.labeler == "bo"}
    history = store.all_events()
    assert [e.label_id for e in history[:2]] == [label1.label_id, label2.label_id]
    assert history[-1].retracts == label2.label_id and history[-1].labeler == "ana"
    # The undone pair comes straight back to the same person, on the same side, for relabeling.
    again = store.next_pair("ana")
    assert again.pair.pair_id == second.pair.pair_id and again.left == second.left

    assert store.undo_last("ana").label_id == label1.label_id
    assert store.undo_last("ana") is None
    assert store.undo_last("nobody") is None
    assert len(store.all_events()) == 5


def test_labels_cannot_be_updated_or_deleted(store: LabelStore) -> None:
    pair = store.list_pairs()[0]
    store.record_label(LabelRecord(pair_id=pair.pair_id, labeler="ana", choice="a", left="a"))
    conn = sqlite3.connect(store.path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE labels SET labeler = 'mallory'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM labels")
    conn.close()
    assert [lab.labeler for lab in store.active_labels()] == ["ana"]


def test_lease_blocks_others_until_it_expires(tmp_path: Path) -> None:
    store = LabelStore(tmp_path, k=1, lease_seconds=60)
    store.add_pairs(make_pairs(1))
    held = store.next_pair("ana", now=1000.0)
    assert held is not None and held.lease_expires == 1060.0
    assert store.next_pair("bo", now=1059.0) is None
    taken_over = store.next_pair("bo", now=1061.0)
    assert taken_over is not None and taken_over.pair.pair_id == held.pair.pair_id


def test_repeated_call_returns_same_pair_and_side(tmp_path: Path) -> None:
    store = LabelStore(tmp_path, k=1)
    store.add_pairs(make_pairs(40))
    first = store.next_pair("ana")
    for _ in range(3):
        again = store.next_pair("ana")
        assert (again.pair.pair_id, again.left) == (first.pair.pair_id, first.left)
    # Sides are drawn at random per pair, so over 40 pairs both sides appear on the left.
    sides = Counter()
    while (assignment := store.next_pair("bo")) is not None:
        sides[assignment.left] += 1
        store.record_label(LabelRecord(pair_id=assignment.pair.pair_id, labeler="bo", choice="a",
                                       left=assignment.left))
    assert sum(sides.values()) == 39 and sides["a"] > 0 and sides["b"] > 0


def test_k_labels_per_pair(tmp_path: Path) -> None:
    store = LabelStore(tmp_path, k=2)
    store.add_pairs(make_pairs(1))
    ana, bo = store.next_pair("ana"), store.next_pair("bo")
    assert ana.pair.pair_id == bo.pair.pair_id
    assert store.next_pair("cy") is None  # two live leases fill k=2
    store.record_label(LabelRecord(pair_id=ana.pair.pair_id, labeler="ana", choice="a", left=ana.left))
    assert store.next_pair("ana") is None  # never a pair she has labeled
    assert store.next_pair("cy") is None  # one label plus bo's lease
    store.release("bo", bo.pair.pair_id)
    assert store.next_pair("cy").pair.pair_id == ana.pair.pair_id
    assert store.progress("ana") == {"mine": 1, "everyone": 1, "labelers": 1, "pairs": 1, "remaining": 1,
                                     "per_labeler": {"ana": 1}, "k": 2}
    store.set_k(1)
    assert store.progress()["remaining"] == 0
    with pytest.raises(LabelError):
        store.set_k(0)


def test_nobody_sees_a_pair_twice(tmp_path: Path) -> None:
    store = LabelStore(tmp_path, k=3)
    pairs = make_pairs(12)
    store.add_pairs(pairs)
    for labeler in ("ana", "bo", "cy"):
        seen = []
        while (assignment := store.next_pair(labeler)) is not None:
            seen.append(assignment.pair.pair_id)
            store.record_label(LabelRecord(pair_id=assignment.pair.pair_id, labeler=labeler, choice="b",
                                           left=assignment.left))
        assert sorted(seen) == sorted(p.pair_id for p in pairs)
    assert store.next_pair("dee") is None
    assert store.progress()["remaining"] == 0


def test_compare_pairs_are_never_handed_to_labelers(tmp_path: Path) -> None:
    store = LabelStore(tmp_path, k=1)
    compare = make_pairs(3, strategy="compare")
    store.add_pairs(compare[:2])
    regular = make_pairs(1)[0]
    store.add_pairs([regular, compare[2]])  # compare pairs before and after the one Label-tab pair
    assert store.progress()["pairs"] == 1 and store.progress()["remaining"] == 1
    vote = LabelRecord(pair_id=compare[0].pair_id, labeler="ana", choice="a", left="b", kind="vote")
    assert store.record_label(vote)
    served = store.next_pair("ana")
    assert served.pair.pair_id == regular.pair_id
    store.record_label(LabelRecord(pair_id=regular.pair_id, labeler="ana", choice="b", left=served.left))
    assert store.next_pair("ana") is None and store.next_pair("bo") is None
    assert store.progress("ana") == {"mine": 1, "everyone": 1, "labelers": 1, "pairs": 1, "remaining": 0,
                                     "per_labeler": {"ana": 1}, "k": 1}
    assert [label.kind for label in store.active_labels()] == ["vote", "label"]
    assert len(store.list_pairs()) == 4  # still stored and exported like any pair


def test_skipped_pair_goes_to_the_back_of_the_queue(tmp_path: Path) -> None:
    store = LabelStore(tmp_path, k=1)
    store.add_pairs(make_pairs(2))
    first = store.next_pair("ana")
    store.release("ana", first.pair.pair_id)
    second = store.next_pair("ana")
    assert second.pair.pair_id != first.pair.pair_id
    # The skipped pair is free for someone else straight away.
    assert store.next_pair("bo").pair.pair_id == first.pair.pair_id


def test_twenty_threads_and_a_second_process(tmp_path: Path) -> None:
    k = 2
    store = LabelStore(tmp_path, k=k)
    store.add_pairs(make_pairs(130))
    names = [f"thread-{i}" for i in range(20)]
    process_names = ["process-a", "process-b"]
    spawn = multiprocessing.get_context("spawn")
    results, ready, go = spawn.Queue(), spawn.Event(), spawn.Event()
    child = spawn.Process(target=_label_in_process, args=(str(tmp_path), process_names, 10, k, results, ready, go))
    child.start()
    assert ready.wait(120), "the second process did not start"

    acknowledged: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            acknowledged[name] = label_through_queue(store, name, 10)
        except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(name,)) for name in names]
    go.set()  # both processes write at the same time
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for _ in process_names:
        name, ids = results.get(timeout=300)
        acknowledged[name] = ids
    child.join(timeout=60)
    assert errors == []
    assert child.exitcode == 0

    labels = store.active_labels()
    assert len(labels) == 220
    by_id = {lab.label_id: lab.labeler for lab in labels}
    for name, ids in acknowledged.items():
        assert len(ids) == 10
        assert all(by_id[label_id] == name for label_id in ids)  # credited to the right person
    assert max(Counter(lab.pair_id for lab in labels).values()) <= k
    assert len({(lab.pair_id, lab.labeler) for lab in labels}) == 220
    assert store.progress()["per_labeler"] == {name: 10 for name in names + process_names}


SIGKILL_CHILD = """
import sys
from labeling.records import LabelRecord
from labeling.store import LabelStore
store = LabelStore(sys.argv[1], k=1)
while (assignment := store.next_pair("worker")) is not None:
    label = LabelRecord(pair_id=assignment.pair.pair_id, labeler="worker", choice="a", left=assignment.left)
    store.record_label(label)
    print(label.label_id, flush=True)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_acknowledged_labels_survive_sigkill(tmp_path: Path) -> None:
    store = LabelStore(tmp_path, k=1)
    store.add_pairs(make_pairs(2000))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen([sys.executable, "-c", SIGKILL_CHILD, str(tmp_path)], stdout=subprocess.PIPE,
                             text=True, cwd=REPO_ROOT, env=env)
    acknowledged = []
    for line in child.stdout:
        acknowledged.append(line.strip())
        if len(acknowledged) == 25:
            break
    child.send_signal(signal.SIGKILL)
    acknowledged += [line.strip() for line in child.stdout.read().splitlines() if line.strip()]
    child.wait()
    assert child.returncode == -signal.SIGKILL
    assert len(acknowledged) < 2000  # it really died mid-way

    reopened = LabelStore(tmp_path, k=1)
    stored = {lab.label_id for lab in reopened.active_labels()}
    assert set(acknowledged) <= stored
    assert reopened._conn().execute("PRAGMA integrity_check").fetchone()[0] == "ok"


V1_SCHEMA = """
CREATE TABLE pairs (pair_id TEXT PRIMARY KEY, data TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE labels (label_id TEXT PRIMARY KEY, pair_id TEXT NOT NULL REFERENCES pairs(pair_id),
    labeler TEXT NOT NULL, choice TEXT NOT NULL, left_side TEXT NOT NULL, rewrite TEXT, created_at REAL NOT NULL);
PRAGMA user_version = 1;
"""


def test_migrates_a_v1_file_without_losing_anything(tmp_path: Path) -> None:
    pairs = make_pairs(2)
    conn = sqlite3.connect(tmp_path / DB_FILENAME)
    conn.executescript(V1_SCHEMA)
    for pair in pairs:
        conn.execute("INSERT INTO pairs VALUES (?, ?, ?)", (pair.pair_id, json.dumps(pair.to_dict()), pair.created_at))
    conn.execute("INSERT INTO labels VALUES ('L1', ?, 'ana', 'b', 'a', 'a better answer', 10.0)", (pairs[0].pair_id,))
    conn.execute("INSERT INTO labels VALUES ('L0', ?, 'bo', 'tie', 'b', NULL, 20.0)", (pairs[1].pair_id,))
    conn.commit()
    conn.close()

    store = LabelStore(tmp_path, k=1)
    assert store.schema_version() == SCHEMA_VERSION
    assert [p.pair_id for p in store.list_pairs()] == [p.pair_id for p in pairs]
    assert store.get_pair(pairs[0].pair_id) == pairs[0]
    assert store.paired_prompt_keys("two_samples", "bundled") == {p.prompt_key for p in pairs}
    labels = store.all_events()
    assert [(lab.label_id, lab.labeler, lab.choice, lab.left, lab.rewrite, lab.kind) for lab in labels] == [
        ("L1", "ana", "b", "a", "a better answer", "label"), ("L0", "bo", "tie", "b", None, "label")]
    # Features added after v1 work on the upgraded file; order of the old rows is kept for undo.
    assert store.undo_last("bo").label_id == "L0"
    store.set_setting("guidelines", "# Be kind")
    assert store.get_setting("guidelines") == "# Be kind"
    assert LabelStore(tmp_path).schema_version() == SCHEMA_VERSION  # reopening is a no-op


def test_refuses_a_file_from_a_newer_version(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / DB_FILENAME)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(LabelError, match="newer than this code"):
        LabelStore(tmp_path)
    assert sqlite3.connect(tmp_path / DB_FILENAME).execute("PRAGMA user_version").fetchone()[0] == 99


def test_a_file_that_is_not_a_database_is_refused_untouched(tmp_path: Path) -> None:
    (tmp_path / DB_FILENAME).write_bytes(b"these are not the labels you are looking for" * 100)
    with pytest.raises(LabelError, match="Cannot open the label store"):
        LabelStore(tmp_path)
    assert (tmp_path / DB_FILENAME).read_bytes() == b"these are not the labels you are looking for" * 100


def test_import_events_round_trip_is_idempotent_and_atomic(tmp_path: Path) -> None:
    source = LabelStore(tmp_path / "a", k=2)
    source.add_pairs(make_pairs(3))
    for labeler in ("ana", "bo"):
        label_through_queue(source, labeler, 2)
    source.undo_last("bo")
    events = json.loads(json.dumps(list(source.iter_events())))  # as they travel through the Hub
    assert {e["type"] for e in events} == {"pair", "label"}
    assert all(e["id"] == (e["pair_id"] if e["type"] == "pair" else e["label_id"]) for e in events)

    target = LabelStore(tmp_path / "b")
    assert target.import_events(events) == (3, 5)
    assert target.import_events(events) == (0, 0)
    assert target.all_events() == source.all_events()
    assert target.active_labels() == source.active_labels()
    assert target.list_pairs() == source.list_pairs()

    broken = events + [dict(events[-1], type="label", id="x", label_id="x", pair_id="missing", retracts=None)]
    fresh = LabelStore(tmp_path / "c")
    with pytest.raises(LabelError, match="Nothing was imported"):
        fresh.import_events(broken)
    assert fresh.count_pairs() == 0 and fresh.all_events() == []
    with pytest.raises(LabelError, match="malformed"):
        fresh.import_events([dict(events[-1], choice="maybe", retracts=None)])


@pytest.mark.parametrize("name", ["", "   ", "\t\n", "x" * 65, "ana\x00", "line\nbreak", None])
def test_bad_labeler_names_are_refused(store: LabelStore, name) -> None:
    with pytest.raises(LabelError, match="[Ll]abeler name"):
        store.next_pair(name)
    with pytest.raises(LabelError):
        validate_labeler(name)


def test_labeler_names_are_stripped_and_otherwise_kept_as_given(store: LabelStore) -> None:
    html = "  <b>Zoë</b> & <script>alert(1)</script>  "
    assignment = store.next_pair(html)
    store.record_label(LabelRecord(pair_id=assignment.pair.pair_id, labeler=html, choice="a", left=assignment.left))
    assert [lab.labeler for lab in store.active_labels()] == [html.strip()]
    assert store.progress(html)["mine"] == 1
    assert validate_labeler("x" * 64) == "x" * 64


def test_bad_label_fields_are_refused_and_nothing_is_stored(store: LabelStore) -> None:
    pair = store.list_pairs()[0]
    with pytest.raises(ValueError, match="choice"):
        LabelRecord(pair_id=pair.pair_id, labeler="ana", choice="maybe", left="a")
    for field, value in [("choice", "maybe"), ("left", "middle"), ("kind", "other"), ("labeler", " "),
                         ("rewrite", 42)]:
        label = LabelRecord(pair_id=pair.pair_id, labeler="ana", choice="a", left="a")
        setattr(label, field, value)
        with pytest.raises(LabelError):
            store.record_label(label)
    with pytest.raises(LabelError, match="undo_last"):
        store.record_label(LabelRecord(pair_id=pair.pair_id, labeler="ana", choice="a", left="a", retracts="L"))
    assert store.all_events() == []


def test_blank_rewrite_is_no_rewrite(store: LabelStore) -> None:
    pair = store.list_pairs()[0]
    store.record_label(LabelRecord(pair_id=pair.pair_id, labeler="ana", choice="a", left="a", rewrite="  \n"))
    assert store.active_labels()[0].rewrite is None


def test_settings_round_trip(store: LabelStore) -> None:
    assert store.get_setting("guidelines", "none") == "none"
    store.set_setting("guidelines", "## Rules\n<b>be kind</b>")
    store.set_setting("guidelines", "## Rules v2")
    assert store.get_setting("guidelines") == "## Rules v2"
    with pytest.raises(LabelError):
        store.set_setting("bad", object())
