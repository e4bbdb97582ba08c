"""The Generate tab over HTTP: admins turn typed prompts into stored pairs (and a rerun skips them), labelers are
refused, and Cancel stops a long job between batches keeping what was made."""

from __future__ import annotations

import time

import pytest

from labeling.pairs import DEFAULT_SAFETY_PROMPT
from labeling.store import LabelStore
from tests.apprunner import RunningApp
from tests.conftest import free_port

pytestmark = pytest.mark.app

ADMIN = ("ada", "ada-pass")
LABELER = ("lee", "lee-pass")


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("generate-data")
    running = RunningApp(["--model", str(tiny_model_dir), "--data-dir", str(data_dir), "--auth", ":".join(ADMIN),
                          "--auth", ":".join(LABELER), "--admins", ADMIN[0]], free_port(),
                         env={"HF_HUB_OFFLINE": "1"})
    running.data_dir = data_dir
    yield running
    running.stop()


def client(app, user):
    from gradio_client import Client

    return Client(app.url, auth=user, verbose=False)


def pair_count(app) -> int:
    store = LabelStore(app.data_dir)
    try:
        return store.count_pairs()
    finally:
        store.close()


def generate_args(strategy="two_samples", max_new_tokens=8, seed=3, batch_size=4):
    return dict(strategy_name=strategy, temp_a=0.7, temp_b=1.1, temp=0.7, sys_prompt=DEFAULT_SAFETY_PROMPT,
                adapter_name=None, max_tokens=max_new_tokens, seed_value=seed, batch=batch_size)


def generate(c, **kwargs):
    a = generate_args(**kwargs)
    return c.predict(a["strategy_name"], a["temp_a"], a["temp_b"], a["temp"], a["sys_prompt"], a["adapter_name"],
                     a["max_tokens"], a["seed_value"], a["batch"], api_name="/generate_pairs")


def submit_generate(c, **kwargs):
    a = generate_args(**kwargs)
    return c.submit(a["strategy_name"], a["temp_a"], a["temp_b"], a["temp"], a["sys_prompt"], a["adapter_name"],
                    a["max_tokens"], a["seed_value"], a["batch"], api_name="/generate_pairs")


def test_typed_prompts_become_pairs_and_a_rerun_skips_them(app):
    admin = client(app, ADMIN)
    before = pair_count(app)
    typed = "Plan my week\nRemind me to call the bank\n\nPlan my week\nSummarise the meeting notes"
    table, message = admin.predict(typed, "chores", "benign", api_name="/prompts_typed")
    assert "Added 3 prompts" in message and "the list has 3" in message
    assert [row[0] for row in table["data"]] == ["chores"] * 3

    result = generate(admin)
    assert result.startswith("Done: 3 new pairs"), result
    assert pair_count(app) == before + 3
    store = LabelStore(app.data_dir)
    pairs = [p for p in store.list_pairs() if p.category == "chores"]
    store.close()
    assert sorted(p.prompt_text for p in pairs) == ["Plan my week", "Remind me to call the bank",
                                                   "Summarise the meeting notes"]
    assert all(p.strategy == "two_samples" and p.intended_label == "benign" for p in pairs)

    again = generate(admin)
    assert again.startswith("Done: 0 new pairs") and "3 already paired" in again, again
    assert pair_count(app) == before + 3


def test_builtin_sets_load_with_limit_and_categories(app):
    from gradio_client.exceptions import AppError

    admin = client(app, ADMIN)
    admin.predict(api_name="/prompts_clear")
    table, message = admin.predict(["harmful"], ["fraud", "malware"], 3, 7, api_name="/prompts_builtin")
    assert "Added 3 prompts from harmful" in message
    assert {row[0] for row in table["data"]} <= {"fraud", "malware"}
    with pytest.raises(AppError, match="No chosen set has category fraud"):
        admin.predict(["benign"], ["fraud"], None, None, api_name="/prompts_builtin")


def test_a_labeler_is_refused_generating(app):
    from gradio_client.exceptions import AppError

    labeler = client(app, LABELER)
    before = pair_count(app)
    with pytest.raises(AppError, match="only admins"):
        labeler.predict("Write a poem", "typed", "", api_name="/prompts_typed")
    with pytest.raises(AppError, match="'lee' cannot generate pairs: only admins"):
        generate(labeler)
    assert pair_count(app) == before


def test_cancel_stops_a_long_job_and_keeps_its_pairs(app):
    admin = client(app, ADMIN)
    admin.predict(api_name="/prompts_clear")
    prompts = "\n".join(f"Long job prompt number {i}: describe a tidy desk" for i in range(60))
    admin.predict(prompts, "long", "", api_name="/prompts_typed")
    before = pair_count(app)
    job = submit_generate(admin, strategy="system_prompt", max_new_tokens=64, batch_size=1)
    deadline = time.monotonic() + 300
    while pair_count(app) < before + 2 and time.monotonic() < deadline and not job.done():
        time.sleep(0.2)
    assert admin.predict(api_name="/generate_cancel").startswith("Stopping after the current batch")
    message = job.result(timeout=300)
    made = pair_count(app) - before
    assert message.startswith("Stopped:"), message
    assert f"{made} new pair" in message
    assert 2 <= made < 60
    assert admin.predict(api_name="/generate_cancel") == "No job of yours is running."


def test_a_labeler_is_refused_hub_push_and_pull(app):
    from gradio_client.exceptions import AppError

    labeler = client(app, LABELER)
    with pytest.raises(AppError, match="'lee' cannot push the dataset to the Hub: only admins"):
        labeler.predict("lee/prefs", True, api_name="/dataset_push")
    with pytest.raises(AppError, match="'lee' cannot pull datasets from the Hub: only admins"):
        labeler.predict("lee/prefs", api_name="/dataset_pull")
    assert not (app.data_dir / "hub").exists()
    with pytest.raises(AppError, match="'lee' cannot export the labelled dataset: only admins"):
        labeler.predict(1, api_name="/dataset_export_jsonl")
    assert not (app.data_dir / "exports").exists()


def test_an_uploaded_file_adds_its_prompts_and_says_what_was_skipped(app, tmp_path):
    from gradio_client import handle_file

    admin = client(app, ADMIN)
    admin.predict(api_name="/prompts_clear")
    upload = tmp_path / "prompts.csv"
    upload.write_text("prompt,category,intended_label\nBook a room for Monday,task_schedule,benign\n"
                      ",task_schedule,benign\nBook a room for Monday,task_schedule,benign\n"
                      "Track my ex's phone,privacy_stalking,harmful\n", encoding="utf-8")
    table, message = admin.predict(handle_file(str(upload)), api_name="/prompts_file")
    assert "Imported 2 prompts from prompts.csv" in message
    assert "Skipped 2 rows (row 3: empty prompt; row 4: duplicate of row 2)" in message
    assert "Added 2 prompts from the file" in message
    assert [row[1] for row in table["data"]] == ["benign", "harmful"]


def test_an_unreachable_hub_dataset_is_a_clear_message(app):
    from gradio_client.exceptions import AppError

    admin = client(app, ADMIN)
    admin.predict(api_name="/prompts_clear")
    # The app runs with HF_HUB_OFFLINE=1, so the Hub cannot be reached.
    with pytest.raises(AppError, match="Could not reach the Hugging Face Hub to load 'someone/prompts'"):
        admin.predict("someone/prompts", "train", api_name="/prompts_hub")
    with pytest.raises(AppError, match="not a Hub dataset id"):
        admin.predict("not a/valid/id", "train", api_name="/prompts_hub")
