"""The Train tab over HTTP, through gradio_client against the real app on a tiny random model: a run on the
labelled pairs shows live steps and chart rows, cancel stops it early, resume finishes it, the adapter becomes a
Playground side that chats, labels recorded during training succeed, and labelers are refused."""

from __future__ import annotations

import json
import time

import pytest

from labeling.records import LabelRecord, PairRecord, as_messages
from labeling.store import LabelStore
from tests.apprunner import RunningApp
from tests.conftest import free_port
from tests.hub_server import HubServer, Token

pytestmark = pytest.mark.app

PAIRS = 24
MAX_STEPS = 10
ADMIN, LABELER = ("a", "pw"), ("b", "pw")
HUB_TOKEN = "hf_alicewrite0123456789"
# One thread per app: the test machine is shared, and torch's spinning worker threads slow a contended CPU ~5x.
APP_ENV = {"OMP_NUM_THREADS": "1"}
FORM = {"run_name": "tiny-run", "beta": 0.1, "learning_rate": 1e-3, "num_train_epochs": 1, "max_steps": MAX_STEPS,
        "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "max_length": 64, "lora_r": 4,
        "lora_alpha": 8, "warmup": 0.0, "seed": 7, "eval_split": 0.2, "save_steps": 100, "merge_after": False,
        "refusal_gate": True}
HEAD = {"recipe_name": "cpu-lora", "source_name": "labelled pairs in this app", "dataset_name": "",
        "overrides_text": "lora_dropout=0.0\nlogging_steps=1", "budget_text": ""}


def seed(data_dir, n: int = PAIRS, extra: int = 6) -> None:
    """n pairs labelled by 'ana' (alternating sides, so both answers win sometimes) and ``extra`` unlabelled ones."""
    store = LabelStore(data_dir)
    pairs = [PairRecord(prompt=as_messages(f"How do I do risky thing {i}?"),
                        response_a=f"I can't help with thing {i}, but here is a safe alternative.",
                        response_b=f"Sure, here is thing {i} step by step.", strategy="two_samples",
                        model_a="m", model_b="m", category="fraud", intended_label="harmful")
             for i in range(n + extra)]
    store.add_pairs(pairs)
    for pair in pairs[:n]:
        store.record_label(LabelRecord(pair_id=pair.pair_id, labeler="ana", choice="a", left="a"))
    store.close()


def start_kwargs(**changes) -> dict:
    values = {**HEAD, "model_name": "", "force_start": False, **FORM}
    values.update(changes)
    return values


def status(client) -> dict:
    return client.predict(api_name="/train_status")[2]


def wait_for(client, done, timeout: float = 240, interval: float = 0.2) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        current = status(client)
        if done(current):
            return current
        assert time.monotonic() < deadline, f"timed out; last status {json.dumps(current)[:800]}"
        time.sleep(interval)


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    """The app, signed-in users a (admin) and b (labeler), and a local Hub server holding a's write token."""
    data_dir = tmp_path_factory.mktemp("train-data")
    runs_dir = tmp_path_factory.mktemp("train-runs")
    seed(data_dir)
    hub = HubServer(tmp_path_factory.mktemp("hub"), {HUB_TOKEN: Token("alice", "write")}).start()
    # Online, but the only Hub it can reach is the local test server.
    env = {**APP_ENV, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": HUB_TOKEN}
    running = RunningApp(["--model", str(tiny_model_dir), "--data-dir", str(data_dir), "--runs-dir", str(runs_dir),
                          "--auth", "a:pw", "--auth", "b:pw", "--admins", "a"], free_port(), env=env)
    running.data_dir, running.runs_dir, running.hub = data_dir, runs_dir, hub
    yield running
    running.stop()
    hub.stop()


def plan_kwargs(**changes) -> dict:
    return {k: v for k, v in start_kwargs(**changes).items() if k != "force_start"}


def test_plan_shows_the_parts_and_verdict(app):
    from gradio_client import Client

    client = Client(app.url, auth=ADMIN, verbose=False)
    plan = client.predict(**plan_kwargs(), api_name="/train_plan")
    assert "Memory plan" in plan and "fits" in plan and "does NOT fit" not in plan
    for part in ("weights", "optimizer", "activations", "logits"):
        assert f"| {part} |" in plan
    # The cpu-lora recipe precomputes the reference and caches the frozen layers of the app's labelled pairs.
    assert "| reference precompute |" in plan and "before training" in plan and "| frozen layer cache |" in plan
    tight = client.predict(**plan_kwargs(budget_text="1MB"), api_name="/train_plan")
    assert "does NOT fit" in tight and ("To fit in" in tight or "smaller model" in tight)


def test_refuses_before_starting_when_it_cannot_fit_or_data_is_bad(app, tmp_path):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(app.url, auth=ADMIN, verbose=False)
    with pytest.raises(AppError, match="needs about .* but cpu has"):
        client.predict(**start_kwargs(run_name="too-big", budget_text="1MB"), api_name="/train_start")
    with pytest.raises(AppError, match=r"Only 1\d training pairs.*Label more pairs"):
        client.predict(**start_kwargs(run_name="too-few", per_device_train_batch_size=8,
                                      gradient_accumulation_steps=4), api_name="/train_start")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "hi", "chosen": "a"}) + "\nnot json\n", encoding="utf-8")
    with pytest.raises(AppError, match="line 2 is not valid JSON"):
        client.predict(**start_kwargs(run_name="bad-data", source_name="a file or Hub dataset",
                                      dataset_name=str(bad)), api_name="/train_start")
    bad.write_text(json.dumps({"prompt": "hi", "chosen": "a"}) + "\n", encoding="utf-8")
    with pytest.raises(AppError, match="row 1: has no rejected"):
        client.predict(**start_kwargs(run_name="bad-data", source_name="a file or Hub dataset",
                                      dataset_name=str(bad)), api_name="/train_start")
    with pytest.raises(AppError, match="unknown setting.*no_such_setting"):
        client.predict(**start_kwargs(run_name="typo", overrides_text="no_such_setting=1"), api_name="/train_start")
    with pytest.raises(AppError, match="no run 'never-started' to resume"):
        client.predict("never-started", "", False, api_name="/train_resume")
    assert status(client)["state"] == "idle"
    assert not list(app.runs_dir.iterdir()), "a refused start must not leave a run behind"
    assert not (app.data_dir / "exports").exists(), "a refused start must not export"


def test_labelers_are_refused_every_privileged_action(app):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    labeler = Client(app.url, auth=LABELER, verbose=False)
    with pytest.raises(AppError, match="'b' cannot start training: only admins can"):
        labeler.predict(**start_kwargs(), api_name="/train_start")
    with pytest.raises(AppError, match="cannot cancel training"):
        labeler.predict(api_name="/train_cancel")
    with pytest.raises(AppError, match="cannot resume training"):
        labeler.predict("tiny-run", "", False, api_name="/train_resume")
    with pytest.raises(AppError, match="cannot load an adapter"):
        labeler.predict(str(app.runs_dir / "x" / "adapter"), api_name="/train_load_adapter")
    with pytest.raises(AppError, match="cannot push an adapter"):
        labeler.predict(str(app.runs_dir / "x" / "adapter"), "b/x", True, api_name="/train_push_adapter")
    assert status(labeler)["state"] == "idle"  # anyone may watch


def test_a_run_that_fails_is_reported_and_the_app_stays_up(app):
    from gradio_client import Client

    client = Client(app.url, auth=ADMIN, verbose=False)
    # The (local) Hub has no such dataset: the run fails on its thread, after Start has returned.
    client.predict(**start_kwargs(run_name="fails", source_name="a file or Hub dataset",
                                  dataset_name="nobody/missing-prefs"), api_name="/train_start")
    failed = wait_for(client, lambda s: s["state"] not in ("running", "cancelling"))
    assert failed["state"] == "failed" and "Could not load Hub dataset 'nobody/missing-prefs'" in failed["error"]
    assert "**Failed:** Could not load Hub dataset" in client.predict(api_name="/train_status")[1]
    assert "Memory plan" in client.predict(**plan_kwargs(), api_name="/train_plan")


def test_train_cancel_resume_then_chat_with_the_adapter(app):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    admin = Client(app.url, auth=ADMIN, verbose=False)
    labeler = Client(app.url, auth=LABELER, verbose=False)
    admin.predict(**start_kwargs(), api_name="/train_start")
    # A second start while it runs says which run and how far it is.
    with pytest.raises(AppError, match="run tiny-run is at "):
        admin.predict(**start_kwargs(run_name="another"), api_name="/train_start")
    # Labelers keep labelling while the run trains on the manager's thread.
    shown = labeler.predict("", api_name="/label_start")
    assert shown[0].startswith("How do I do risky thing")
    assert labeler.predict("", "", api_name="/label_left")[-1] == "Saved."
    assert status(admin)["state"] == "running"

    running = wait_for(admin, lambda s: s["step"] >= 1 or s["state"] != "running", interval=0.05)
    admin.predict(api_name="/train_cancel")
    assert running["state"] == "running", running
    cancelled = wait_for(admin, lambda s: s["state"] in ("cancelled", "finished", "failed"))
    assert cancelled["state"] == "cancelled", cancelled
    stopped_at = cancelled["step"]
    assert 1 <= stopped_at < MAX_STEPS
    assert cancelled["history_steps"] == list(range(1, stopped_at + 1))
    assert "Resume" in admin.predict(api_name="/train_status")[1]
    assert list((app.runs_dir / "tiny-run" / "checkpoints").glob(f"checkpoint-{stopped_at}"))
    exports = list((app.data_dir / "exports").glob("train-*.jsonl"))
    assert len(exports) == 1 and len(exports[0].read_text().splitlines()) == PAIRS
    with pytest.raises(AppError, match="has not finished"):
        admin.predict(api_name="/train_load_current")
    # Start with the same name refuses; Resume continues from the checkpoint.
    with pytest.raises(AppError, match="already exists.*Resume"):
        admin.predict(**start_kwargs(), api_name="/train_start")
    admin.predict("tiny-run", "", False, api_name="/train_resume")
    finished = wait_for(admin, lambda s: s["state"] in ("finished", "failed"))
    assert finished["state"] == "finished", finished
    assert finished["step"] == MAX_STEPS == finished["max_steps"]
    assert finished["history_steps"] == list(range(stopped_at + 1, MAX_STEPS + 1)), "resume continues, not restarts"
    progress, text, _, *charts = admin.predict(api_name="/train_status")[:8]
    assert f"**{MAX_STEPS}/{MAX_STEPS}** steps" in progress and "finished" in text and "Adapter:" in text
    assert "eval_rewards/accuracies" in text  # final metrics include the held-out evaluation
    loss_chart = charts[0]["value"] if "value" in charts[0] else charts[0]
    assert len(loss_chart["data"]) == MAX_STEPS - stopped_at
    adapter = finished["adapter_dir"]
    assert (app.runs_dir / "tiny-run" / "adapter" / "adapter_config.json").is_file()
    # The gate was fitted on the built-in prompts after training and saved with the adapter.
    gate = json.loads((app.runs_dir / "tiny-run" / "adapter" / "refusal_gate.json").read_text())
    assert gate["fitted_on"]["harmful"] > 400 and gate["fitted_on"]["benign"] > 700
    assert f"With a refusal gate: layer {gate['layer']}," in text

    table, _ = admin.predict(api_name="/train_runs")
    assert [row[0] for row in table["data"]] == ["tiny-run"]
    assert str(table["data"][0][1]) == str(MAX_STEPS)

    assert "tiny-run" in admin.predict(api_name="/train_load_current")
    assert "tiny-run" in admin.predict(adapter, api_name="/train_load_adapter")  # loading twice is harmless
    facts, _ = admin.predict(api_name="/model_facts")
    assert f"| Adapters loaded | tiny-run (refusal gate, layer {gate['layer']}) |" in facts
    history, _ = admin.predict(message="Hello there", side="tiny-run", max_new_tokens=8, do_sample=True,
                               temperature=1.0, top_p=1.0, seed=3, system_prompt="", api_name="/chat")
    reply = history[-1]["content"]
    reply = "".join(p.get("text", "") for p in reply) if isinstance(reply, list) else reply
    assert history[-1]["role"] == "assistant" and reply.strip()

    # Push with the token from HF_TOKEN; the message never shows it.
    message = admin.predict(adapter, "alice/tiny-run-lora", True, api_name="/train_push_adapter")
    assert "alice/tiny-run-lora" in message and HUB_TOKEN not in message
    files = app.hub.files("alice/tiny-run-lora", repo_type="model")
    assert files["adapter_model.safetensors"] == (app.runs_dir / "tiny-run" / "adapter" /
                                                  "adapter_model.safetensors").read_bytes()
    with pytest.raises(AppError, match="belongs to 'bob'") as refused:
        admin.predict(adapter, "bob/tiny-run-lora", True, api_name="/train_push_adapter")
    assert HUB_TOKEN not in str(refused.value)
