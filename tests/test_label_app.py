"""The Label tab over HTTP: many concurrent labelers store exactly their labels under their own names, and a
SIGKILL of the server loses no label it acknowledged."""

import threading
import time

import pytest

from labeling.records import PairRecord, as_messages
from labeling.store import LabelStore
from tests.apprunner import RunningApp
from tests.conftest import free_port

pytestmark = pytest.mark.app


def seed_pairs(data_dir, count):
    store = LabelStore(data_dir)
    store.add_pairs([PairRecord(prompt=as_messages(f"Request {i}: <script>alert({i})</script>"),
                                response_a=f"answer a {i}", response_b=f"answer b {i}", strategy="test",
                                model_a="m", model_b="m", category="test") for i in range(count)])
    store.close()


def labeler(url, name, count, acked, errors, action="/label_left"):
    from gradio_client import Client

    try:
        client = Client(url, verbose=False)
        shown = client.predict(name, api_name="/label_start")
        for _ in range(count):
            assert shown[0].startswith("Request"), shown
            shown = client.predict("", "", api_name=action)
            assert shown[-1] == "Saved.", shown[-1]
            acked[name] = acked.get(name, 0) + 1
    except Exception as exc:  # collected and reported by the test
        errors.append(f"{name}: {exc!r}")


def test_twenty_concurrent_labelers_store_exactly_their_labels(tiny_model_dir, tmp_path):
    seed_pairs(tmp_path, 230)
    app = RunningApp(["--model", str(tiny_model_dir), "--data-dir", str(tmp_path), "--lazy"], free_port())
    try:
        names = [f"labeler-{i}" for i in range(19)] + ["<b>eve</b> & co"]
        acked, errors = {}, []
        threads = [threading.Thread(target=labeler, args=(app.url, name, 10, acked, errors)) for name in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        assert not errors, errors[:3]
    finally:
        app.stop()
    labels = LabelStore(tmp_path).active_labels()
    assert len(labels) == 200
    per_name = {}
    for label in labels:
        per_name[label.labeler] = per_name.get(label.labeler, 0) + 1
    assert per_name == {name: 10 for name in names}
    assert len({label.pair_id for label in labels}) == 200, "with k=1 no pair may be labelled twice"
    assert len({label.label_id for label in labels}) == 200


def test_sigkill_mid_labeling_loses_no_acknowledged_label(tiny_model_dir, tmp_path):
    seed_pairs(tmp_path, 400)
    app = RunningApp(["--model", str(tiny_model_dir), "--data-dir", str(tmp_path), "--lazy"], free_port())
    acked, errors = {}, []
    names = [f"k{i}" for i in range(5)]
    threads = [threading.Thread(target=labeler, args=(app.url, name, 60, acked, errors), daemon=True)
               for name in names]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    while sum(acked.values()) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    snapshot = dict(acked)
    app.stop(kill=True)
    for thread in threads:
        thread.join(timeout=60)
    assert sum(snapshot.values()) >= 40, errors[:3]
    stored = {}
    for label in LabelStore(tmp_path).active_labels():
        stored[label.labeler] = stored.get(label.labeler, 0) + 1
    for name in names:
        assert stored.get(name, 0) >= snapshot.get(name, 0), (name, stored, snapshot)
