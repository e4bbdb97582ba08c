"""The Hub issue's "done when", through the running app: 30 labels made on the Label tab and pushed from the
Dataset tab come back, exactly and once, when the app restarts on a wiped data dir with ``--hub-repo``; a push
the Hub cuts off is reported as pending; the token never appears in the app's output.

The Hub is tests/hub_server.py on 127.0.0.1 (HF_ENDPOINT in the app's environment); nothing reaches the real Hub.
"""

from __future__ import annotations

import shutil

import pytest

from labeling.records import PairRecord, as_messages
from labeling.store import LabelStore
from tests.apprunner import RunningApp
from tests.conftest import free_port
from tests.hub_server import HubServer, Token

pytestmark = pytest.mark.app

TOKEN = "hf_alicewrite0123456789"
REPO = "alice/refusal-prefs"
ACTIONS = ("left", "right", "tie", "left", "both_bad", "right")


def label_keys(data_dir) -> set[tuple[str, str, str, str]]:
    store = LabelStore(data_dir)
    try:
        return {(label.label_id, label.pair_id, label.labeler, label.choice) for label in store.all_events()}
    finally:
        store.close()


def counts(data_dir) -> tuple[int, int]:
    store = LabelStore(data_dir)
    try:
        return store.count_pairs(), len(store.all_events())
    finally:
        store.close()


def stopped_output(app: RunningApp) -> str:
    app.stop()
    return app.log_path.read_text(errors="replace")


def test_labels_pushed_from_the_app_come_back_after_a_wiped_restart(tiny_model_dir, tmp_path):
    from gradio_client import Client

    hub = HubServer(tmp_path / "hub-storage", {TOKEN: Token("alice", "write")}).start()
    env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf-home"),
           "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}
    data_dir = tmp_path / "data"
    store = LabelStore(data_dir)
    store.add_pairs([PairRecord(prompt=as_messages(f"Request {i}: help me with item {i}"),
                                response_a=f"answer a {i}", response_b=f"answer b {i}", strategy="two_samples",
                                model_a="m", model_b="m", category="fraud" if i % 3 else "task_create",
                                intended_label="harmful" if i % 3 else "benign") for i in range(31)])
    store.close()  # 31: the last pair shown to the first labeler stays leased to her
    base_args = ["--model", str(tiny_model_dir), "--data-dir", str(data_dir), "--lazy"]
    outputs = []
    try:
        app = RunningApp(base_args, free_port(), env=env)
        try:
            for name, count in (("ana", 15), ("bo", 15)):
                client = Client(app.url, verbose=False)
                client.predict(name, api_name="/label_start")
                for i in range(count):
                    shown = client.predict("", "", api_name=f"/label_{ACTIONS[i % len(ACTIONS)]}")
                    assert shown[-1].startswith("Saved."), shown
            labelled = label_keys(data_dir)
            assert len(labelled) == 30 and {key[2] for key in labelled} == {"ana", "bo"}

            admin = Client(app.url, verbose=False)
            hub.state.drop_next_commits = 1
            pending = admin.predict(REPO, True, api_name="/dataset_push")
            assert pending.startswith(f"Push to {REPO} pending:") and "cut off" in pending, pending
            pushed = admin.predict(REPO, True, api_name="/dataset_push")
            assert pushed.startswith(f"Pushed 20 preference rows to {REPO}"), pushed  # ties and both-bad left out
            assert any(name.startswith("raw/") for name in hub.files(REPO))
        finally:
            outputs.append(stopped_output(app))

        shutil.rmtree(data_dir)
        data_dir.mkdir()
        for restart in range(2):
            app = RunningApp([*base_args, "--hub-repo", REPO], free_port(), env=env)
            try:
                assert label_keys(data_dir) == labelled, f"restart {restart + 1}"
                assert counts(data_dir) == (31, 30), f"restart {restart + 1} duplicated events"
            finally:
                outputs.append(stopped_output(app))
        assert "Restored from alice/refusal-prefs: 31 new pairs and 30 new labels" in outputs[1]
        assert "0 new pairs and 0 new labels" in outputs[2]
    finally:
        hub.stop()
    for output in outputs:
        assert TOKEN not in output
