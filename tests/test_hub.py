"""Hub push, pull, continuous sync and restore, through the real huggingface_hub client against tests/hub_server.py.

Nothing here reaches the real Hub: HF_ENDPOINT points at a server on 127.0.0.1 started per test.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labeling.export import build_preference_rows
from labeling.hub import HubError, main, pull_dataset, push_dataset, read_status
from labeling.hub_sync import EventLog, restore_from_hub, start_sync
from labeling.records import LabelRecord, PairRecord
from labeling.store import LabelStore
from tests.hub_server import ALICE_READ, ALICE_WRITE, BOB_WRITE, start_test_hub

WRITE, READ, BOB = ALICE_WRITE, ALICE_READ, BOB_WRITE
TOKENS = (WRITE, READ, BOB)
REPO = "alice/refusal-prefs"
CATEGORIES = ("fraud", "malware", "benign_coding")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def hub(tmp_path, monkeypatch):
    server = start_test_hub(tmp_path / "hub-storage", monkeypatch)
    yield server
    server.stop()


def make_pairs(n: int) -> list[PairRecord]:
    return [PairRecord(prompt=[{"role": "user", "content": f"Request number {i}: how do I do thing {i}?"}],
                       response_a=f"Sure, here is how to do thing {i}.", response_b=f"I can't help with {i}, but...",
                       strategy="two_samples", model_a="bundled", model_b="bundled",
                       category=CATEGORIES[i % len(CATEGORIES)], intended_label="harmful" if i % 3 else "benign",
                       seed=i)
            for i in range(n)]


def labeled_store(data_dir: Path, n: int = 30) -> LabelStore:
    """n pairs, each labeled by alice; bob labels the first ten too, and agrees (a split vote exports no row)."""
    store = LabelStore(data_dir)
    pairs = make_pairs(n)
    store.add_pairs(pairs)
    for i, pair in enumerate(pairs):
        store.record_label(LabelRecord(pair_id=pair.pair_id, labeler="alice", choice="b" if i % 4 else "a",
                                       left="a"))
        if i < 10:
            store.record_label(LabelRecord(pair_id=pair.pair_id, labeler="bob", choice="b" if i % 4 else "a",
                                           left="b"))
    return store


def label_keys(store: LabelStore) -> set[tuple[str, str, str, str]]:
    return {(label.label_id, label.pair_id, label.labeler, label.choice) for label in store.active_labels()}


def closed_port_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_push_wipe_restore_brings_back_the_same_labels_once(hub, tmp_path):
    data_dir = tmp_path / "data"
    store = labeled_store(data_dir)
    before = label_keys(store)
    assert len({key for key in before if key[2] == "alice"}) == 30

    result = push_dataset(store, REPO, token=WRITE)

    files = hub.files(REPO)
    assert "data/train-00000-of-00001.parquet" in files and "README.md" in files
    assert [name for name in files if name.startswith("raw/")] and result.raw_files == 1
    assert hub.state.find("dataset", REPO).private  # private unless asked otherwise
    assert result.commit_message.startswith("Create preference dataset: 30 pairs")
    store.close()
    shutil.rmtree(data_dir)

    fresh = LabelStore(data_dir)
    restored = restore_from_hub(fresh, REPO, token=WRITE)
    assert (restored.pairs_added, restored.labels_added) == (30, 40)
    assert label_keys(fresh) == before

    again = restore_from_hub(fresh, REPO, token=WRITE)
    assert (again.pairs_added, again.labels_added) == (0, 0)
    assert label_keys(fresh) == before

    # Restored events count as written: the next sync uploads only what is new.
    sync = start_sync(fresh, REPO, interval_minutes=60, token=WRITE)
    new_pair = make_pairs(31)[30]
    fresh.add_pairs([new_pair])
    fresh.record_label(LabelRecord(pair_id=new_pair.pair_id, labeler="carol", choice="b", left="a"))
    status = sync.stop()
    assert not status.pending
    own = [path for path in EventLog(data_dir).own_files()]
    assert len(own) == 1 and len(own[0].read_text().splitlines()) == 2
    assert hub.files(REPO)[f"raw/{own[0].name}"] == own[0].read_bytes()


def test_card_and_commit_messages_say_what_changed(hub, tmp_path):
    store = labeled_store(tmp_path / "data")
    push_dataset(store, REPO, token=WRITE)
    card = hub.files(REPO)["README.md"].decode()
    assert "license: apache-2.0" in card and "task_categories" in card and "configs:" in card
    assert "Preference pairs: **30**" in card and "**2** labeler(s)" in card
    assert "| fraud | 10 |" in card and "`bundled`" in card and "`two_samples` (30)" in card
    assert "pairs labeled by 2+ people = 10" in card and "`chosen`:" in card

    pair = make_pairs(31)[30]
    store.add_pairs([pair])
    store.record_label(LabelRecord(pair_id=pair.pair_id, labeler="alice", choice="a", left="a"))
    second = push_dataset(store, REPO, token=WRITE)
    assert second.commit_message.startswith("Update preference dataset: 31 pairs (+1), 41 labels (+1)")
    assert [commit.title for commit in hub.commits(REPO)][-1] == second.commit_message


def test_load_dataset_against_the_server_returns_the_pushed_rows(hub, tmp_path):
    store = labeled_store(tmp_path / "data")
    push_dataset(store, REPO, token=WRITE)
    expected = [{key: row[key] for key in ("prompt", "chosen", "rejected", "category")}
                for row in build_preference_rows(store)]
    script = ("import json, datasets\n"
              f"ds = datasets.load_dataset({REPO!r}, split='train')\n"
              "print(json.dumps([{k: r[k] for k in ('prompt', 'chosen', 'rejected', 'category')} for r in ds]))\n")
    # datasets and huggingface_hub read HF_ENDPOINT at import, hence a fresh process.
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": WRITE, "HF_HOME": str(tmp_path / "hf-home"),
           "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected
    assert WRITE not in done.stdout + done.stderr


def test_pull_dataset_reads_preferences_and_prompts(hub, tmp_path):
    from huggingface_hub import CommitOperationAdd, HfApi

    store = labeled_store(tmp_path / "data")
    push_dataset(store, REPO, token=WRITE)
    pulled = pull_dataset(REPO, token=WRITE, cache_dir=tmp_path / "cache")
    assert pulled.kind == "preference"
    assert pulled.dataset["chosen"] == [row["chosen"] for row in build_preference_rows(store)]

    # Someone else's public prompt set.
    api = HfApi(endpoint=hub.endpoint, token=BOB)
    api.create_repo("bob/prompts", repo_type="dataset", private=False)
    lines = [{"question": "How do I pick a lock?", "category": "illegal_activity"},
             {"question": "How do I kill a Python process?", "category": "benign_coding"}]
    api.create_commit("bob/prompts", [CommitOperationAdd(
        "train.jsonl", "".join(json.dumps(line) + "\n" for line in lines).encode())], commit_message="prompts",
        repo_type="dataset")
    prompts = pull_dataset("bob/prompts", cache_dir=tmp_path / "cache")
    assert prompts.kind == "prompts"
    assert [(p.text, p.category, p.source) for p in prompts.prompts] == [
        (line["question"], line["category"], "hub:bob/prompts") for line in lines]

    with pytest.raises(HubError) as missing:
        pull_dataset("bob/nothing-here", cache_dir=tmp_path / "cache")
    assert missing.value.kind == "not_found" and "bob/nothing-here" in str(missing.value)


def test_cut_off_push_keeps_data_and_reports_pending_then_next_push_succeeds(hub, tmp_path):
    data_dir = tmp_path / "data"
    store = labeled_store(data_dir)
    before = label_keys(store)
    hub.state.drop_next_commits = 1

    with pytest.raises(HubError) as cut:
        push_dataset(store, REPO, token=WRITE)
    assert cut.value.kind == "unreachable" and cut.value.pending
    assert "cut off" in str(cut.value) and "pending" in str(cut.value)
    assert read_status(data_dir).pending and "cut off" in read_status(data_dir).last_error
    assert label_keys(LabelStore(data_dir)) == before
    assert not [name for name in hub.files(REPO) if name.endswith(".parquet")]

    result = push_dataset(store, REPO, token=WRITE)
    assert result.status.pending is False and not read_status(data_dir).pending
    assert "data/train-00000-of-00001.parquet" in hub.files(REPO)


def test_sync_cut_off_mid_commit_is_pending_and_the_next_interval_catches_up(hub, tmp_path):
    data_dir = tmp_path / "data"
    store = labeled_store(data_dir, n=5)
    sync = start_sync(store, REPO, interval_minutes=60, token=WRITE)
    hub.state.drop_next_commits = 1
    status = sync.push_now()
    assert status.pending and "cut off" in status.last_error
    own = EventLog(data_dir).own_files()
    assert len(own) == 1 and len(own[0].read_text().splitlines()) == 5 + 10  # 5 pairs, 2 labels each
    assert not [name for name in hub.files(REPO) if name.startswith("raw/")]

    status = sync.push_now()
    assert not status.pending and status.last_error is None
    assert hub.files(REPO)[f"raw/{own[0].name}"] == own[0].read_bytes()

    # Labels made after the last interval go out with the push that stop() makes.
    pair = make_pairs(6)[5]
    store.add_pairs([pair])
    store.record_label(LabelRecord(pair_id=pair.pair_id, labeler="dana", choice="tie", left="b"))
    assert not sync.stop().pending
    remote = hub.files(REPO)[f"raw/{own[0].name}"].decode().splitlines()
    assert [json.loads(line)["id"] for line in remote[-2:]] == [pair.pair_id, store.active_labels()[-1].label_id]


def test_sync_runs_on_its_interval(hub, tmp_path):
    store = labeled_store(tmp_path / "data", n=3)
    sync = start_sync(store, REPO, interval_minutes=0.01, token=WRITE)  # 0.6 s
    try:
        for _ in range(300):  # polls for the first timed push; asserts nothing about how long it took
            if sync.pushes:
                break
            time.sleep(0.1)
        assert sync.pushes >= 1
        assert [name for name in hub.files(REPO) if name.startswith("raw/events-")]
    finally:
        sync.stop()


def test_no_token_is_a_clear_message(hub, tmp_path):
    store = labeled_store(tmp_path / "data", n=3)
    with pytest.raises(HubError) as error:
        push_dataset(store, REPO)
    assert error.value.kind == "no_token" and "HF_TOKEN" in str(error.value)
    assert hub.state.find("dataset", REPO) is None
    # The sync does not raise in the app: it reports.
    status = start_sync(store, REPO, interval_minutes=60).stop()
    assert status.pending and "No Hugging Face token" in status.last_error


def test_token_from_hf_token_env_is_used(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", WRITE)
    result = push_dataset(labeled_store(tmp_path / "data", n=3), REPO)
    assert result.commit_oid == hub.commits(REPO)[-1].oid


def test_read_only_token_is_a_clear_message(hub, tmp_path):
    with pytest.raises(HubError) as error:
        push_dataset(labeled_store(tmp_path / "data", n=3), REPO, token=READ)
    assert error.value.kind == "read_only" and "read-only" in str(error.value) and "write access" in str(error.value)
    assert hub.state.find("dataset", REPO) is None


def test_server_refusal_is_translated_when_the_preflight_cannot_tell(hub, tmp_path):
    # A read token's refusal by the server itself (as for fine-grained tokens, whose role whoami does not state).
    from huggingface_hub import CommitOperationAdd

    from labeling.hub import make_api, translate_error

    make_api(WRITE).create_repo(REPO, repo_type="dataset", private=True)
    with pytest.raises(Exception) as raw:
        make_api(READ).create_commit(REPO, [CommitOperationAdd("x.txt", b"x")], commit_message="x",
                                     repo_type="dataset")
    error = translate_error(raw.value, REPO, READ, "push")
    assert error.kind == "read_only" and "write access" in error.message and READ not in error.message


def test_someone_elses_repo_is_a_clear_message(hub, tmp_path):
    with pytest.raises(HubError) as error:
        push_dataset(labeled_store(tmp_path / "data", n=3), REPO, token=BOB)
    assert error.value.kind == "not_owner"
    assert "belongs to 'alice'" in str(error.value) and "signed in as 'bob'" in str(error.value)
    assert "bob/refusal-prefs" in str(error.value)


def test_invalid_token_is_a_clear_message(hub, tmp_path):
    with pytest.raises(HubError) as error:
        push_dataset(labeled_store(tmp_path / "data", n=3), REPO, token="hf_notavalidtoken12345")
    assert error.value.kind == "invalid_token" and "hf_notavalidtoken12345" not in str(error.value)


def test_hub_down_keeps_data_and_reports_pending(hub, tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    store = labeled_store(data_dir, n=4)
    before = label_keys(store)
    monkeypatch.setenv("HF_ENDPOINT", closed_port_endpoint())
    with pytest.raises(HubError) as error:
        push_dataset(store, REPO, token=WRITE)
    assert error.value.kind == "unreachable" and error.value.pending
    assert "could not be reached" in str(error.value) and "kept locally" in str(error.value)
    status = read_status(data_dir)
    assert status.pending and status.repo_id == REPO and "refused" in status.last_error
    assert label_keys(LabelStore(data_dir)) == before
    assert len(EventLog(data_dir).own_files()[0].read_text().splitlines()) == 4 + 4 + 4  # kept, ready to go

    with pytest.raises(HubError) as restore_error:
        restore_from_hub(LabelStore(tmp_path / "other"), REPO, token=WRITE)
    assert restore_error.value.kind == "unreachable"

    sync_status = start_sync(store, REPO, interval_minutes=60, token=WRITE).stop()
    assert sync_status.pending and "could not be reached" in sync_status.last_error

    with pytest.raises(HubError) as pull_error:
        pull_dataset(REPO, token=WRITE, cache_dir=tmp_path / "cache")
    assert pull_error.value.kind == "unreachable"


def test_sync_reports_the_hub_going_down_after_it_started(hub, tmp_path):
    store = labeled_store(tmp_path / "data", n=2)
    sync = start_sync(store, REPO, interval_minutes=60, token=WRITE)
    assert not sync.push_now().pending
    pair = make_pairs(3)[2]
    store.add_pairs([pair])
    hub.stop()
    status = sync.stop()
    assert status.pending and "could not be reached" in status.last_error
    assert EventLog(tmp_path / "data").own_files()[0].read_text().count("\n") == 2 + 4 + 1


def test_restore_of_a_repo_that_does_not_exist_yet_restores_nothing(hub, tmp_path):
    result = restore_from_hub(LabelStore(tmp_path / "data"), "alice/new-project", token=WRITE)
    assert not result.found and result.pairs_added == 0
    assert "not found" in result.describe()


def test_offline_mode_is_a_clear_message(hub, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError) as error:
        push_dataset(labeled_store(tmp_path / "data", n=3), REPO, token=WRITE)
    assert error.value.kind == "unreachable" and "HF_HUB_OFFLINE" in str(error.value) and error.value.pending
    assert not hub.state.requests


def test_push_and_sync_share_one_event_file_and_full_segments_are_not_resent(hub, tmp_path):
    data_dir = tmp_path / "data"
    store = labeled_store(data_dir, n=6)
    sync = start_sync(store, REPO, interval_minutes=60, token=WRITE)
    sync.log.segment_bytes = 2000  # a few events per segment
    push_dataset(store, REPO, token=WRITE, event_log=sync.log)
    segments = EventLog(data_dir).own_files()
    assert len(segments) == 1 and len(segments[0].read_text().splitlines()) == 6 + 12
    pair = make_pairs(7)[6]
    store.add_pairs([pair])
    store.record_label(LabelRecord(pair_id=pair.pair_id, labeler="erin", choice="a", left="a"))
    commits_before = len(hub.commits(REPO))
    assert not sync.stop().pending
    segments = EventLog(data_dir).own_files()
    assert len(segments) == 2 and len(segments[1].read_text().splitlines()) == 2
    assert len(hub.commits(REPO)) == commits_before + 1
    assert hub.commits(REPO)[-1].title.startswith("Sync raw labels: +1 pair(s), +1 label event(s)")
    assert [hub.files(REPO)[f"raw/{path.name}"] for path in segments] == [path.read_bytes() for path in segments]
    restored = LabelStore(tmp_path / "restored")
    assert restore_from_hub(restored, REPO, token=WRITE).labels_added == 13


def test_private_repo_is_invisible_without_its_owners_token(hub, tmp_path):
    push_dataset(labeled_store(tmp_path / "data", n=3), REPO, token=WRITE)
    for token in (None, BOB):
        with pytest.raises(HubError) as error:
            pull_dataset(REPO, token=token, cache_dir=tmp_path / "cache")
        assert error.value.kind == "not_found"


def test_token_never_appears_in_logs_or_messages(hub, tmp_path, caplog, capsys, monkeypatch):
    caplog.set_level(logging.DEBUG)
    messages = []
    store = labeled_store(tmp_path / "data", n=3)
    push_dataset(store, REPO, token=WRITE)
    restore_from_hub(LabelStore(tmp_path / "restored"), REPO, token=WRITE)
    for token, repo in ((READ, REPO), (BOB, REPO), ("hf_notavalidtoken12345", REPO)):
        with pytest.raises(HubError) as error:
            push_dataset(store, repo, token=token)
        messages.append(str(error.value))
    hub.state.drop_next_commits = 1
    messages.append(start_sync(store, REPO, interval_minutes=60, token=WRITE).stop().last_error or "")
    monkeypatch.setenv("HF_TOKEN", WRITE)
    assert main(["push", "--data-dir", str(tmp_path / "data"), "--repo", "bob/stolen"]) == 1
    monkeypatch.setenv("HF_ENDPOINT", closed_port_endpoint())
    assert main(["push", "--data-dir", str(tmp_path / "data"), "--repo", REPO]) == 1
    messages.append(read_status(tmp_path / "data").last_error or "")
    captured = capsys.readouterr()
    everything = "\n".join([caplog.text, captured.out, captured.err, *messages,
                            (tmp_path / "data" / "hub" / "status.json").read_text()])
    assert "could not be reached" in everything and "belongs to 'bob'" in everything  # the failures did happen
    for token in (*TOKENS, "hf_notavalidtoken12345"):
        assert token not in everything


def test_cli_push_and_status(hub, tmp_path, monkeypatch, capsys):
    data_dir = tmp_path / "data"
    labeled_store(data_dir, n=4).close()
    assert main(["push", "--data-dir", str(data_dir), "--repo", REPO]) == 1
    assert "No Hugging Face token" in capsys.readouterr().err
    monkeypatch.setenv("HF_TOKEN", WRITE)
    assert main(["push", "--data-dir", str(data_dir), "--repo", REPO, "--public"]) == 0
    assert not hub.state.find("dataset", REPO).private
    assert main(["status", "--data-dir", str(data_dir)]) == 0
    assert f"Up to date with {REPO}" in capsys.readouterr().out
    assert main(["push", "--data-dir", str(data_dir), "--repo", "not a repo"]) == 1
    assert "OWNER/NAME" in capsys.readouterr().err

    out = tmp_path / "rows.jsonl"
    assert main(["pull", "--repo", REPO, "--out", str(out)]) == 0
    assert f"{REPO}: 4 rows (preference)" in capsys.readouterr().out
    assert [json.loads(line)["chosen"] for line in out.read_text().splitlines()] == [
        row["chosen"] for row in build_preference_rows(LabelStore(data_dir))]
    assert main(["restore", "--data-dir", str(tmp_path / "fresh"), "--repo", REPO]) == 0
    assert "4 new pairs and 8 new labels" in capsys.readouterr().out  # alice and bob on each


def test_restore_refuses_events_that_conflict_with_the_store(hub, tmp_path):
    from huggingface_hub import CommitOperationAdd

    from labeling.hub import make_api

    store = labeled_store(tmp_path / "data", n=2)
    label = store.active_labels()[0]
    forged = {**label.to_dict(), "type": "label", "id": label.label_id, "choice": "tie"}
    api = make_api(WRITE)
    api.create_repo(REPO, repo_type="dataset", private=True)
    api.create_commit(REPO, [CommitOperationAdd("raw/events-x.jsonl", (json.dumps(forged) + "\n").encode())],
                      commit_message="forged", repo_type="dataset")
    before = label_keys(store)
    with pytest.raises(HubError) as error:
        restore_from_hub(store, REPO, token=WRITE)
    assert error.value.kind == "bad_input" and "nothing was" in str(error.value)
    assert label_keys(store) == before
