"""The Compare tab over HTTP with gradio_client, on a tiny model and a freshly trained-from-random LoRA adapter:
only an admin can load the adapter, the two sides answer differently, a blind vote lands in the label store as a
compare pair with kind "vote" (never served by the Label tab), presets run with verdicts, and exports download.

Run: .venv/bin/python -m pytest tests/test_compare_tab.py
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest

from alignment.compare import COMPARE_STRATEGY, load_demo_prompts
from labeling.store import LabelStore
from tests.apprunner import RunningApp
from tests.conftest import free_port
from tests.test_compare import make_adapter

pytestmark = pytest.mark.app

# max_new_tokens, do_sample, temperature, top_p, seed, system_prompt: sampled with a fixed seed, because greedy
# decoding on a random model repeats one special token and decodes to nothing.
SAMPLING = (12, True, 0.7, 0.9, 11, "")


def last_answer(history: list[dict]) -> str:
    assert history[-1]["role"] == "assistant", history
    content = history[-1]["content"]
    if isinstance(content, list):
        content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


@pytest.fixture(scope="module")
def running(tiny_model_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    adapter = make_adapter(tiny_model_dir, tmp_path_factory.mktemp("run") / "aligned")
    app = RunningApp(["--model", str(tiny_model_dir), "--data-dir", str(data), "--lazy", "--auth", "admin:pw1",
                      "--auth", "eve:pw2", "--admins", "admin"], free_port(), env={"HF_HUB_OFFLINE": "1"})
    try:
        yield app, data, adapter
    finally:
        app.stop()


def client(app: RunningApp, user: str, password: str):
    from gradio_client import Client

    return Client(app.url, auth=(user, password), verbose=False)


def test_compare_tab_end_to_end(running) -> None:
    from gradio_client.exceptions import AppError

    app, data, adapter = running
    eve, admin = client(app, "eve", "pw2"), client(app, "admin", "pw1")

    with pytest.raises(AppError, match="only admins"):
        eve.predict(str(adapter), "", api_name="/compare_load_adapter")
    left, right, status = admin.predict(str(adapter), "", api_name="/compare_load_adapter")
    assert right["value"] == "aligned" and ["aligned", "aligned"] in right["choices"]  # the client gets the update
    assert "Loaded adapter" in status

    # Named sides: both stream, with the same seed, and differ because the weights differ.
    left_chat, right_chat, message, names, status = eve.predict(
        "Say <b>hello</b>.", [], [], "base", "aligned", False, "unknown", *SAMPLING, api_name="/compare_send")
    assert message == ""
    shown = left_chat[0]["content"]
    shown = shown if isinstance(shown, str) else "".join(part["text"] for part in shown)
    assert shown == "Say &lt;b&gt;hello&lt;/b&gt;.", "prompts must reach the Chatbot escaped, to show as text"
    assert last_answer(left_chat) and last_answer(right_chat)
    assert last_answer(left_chat) != last_answer(right_chat)
    assert "**Left:** base" in names and "**Right:** aligned" in names
    assert "seed 11" in status.lower() and "Judge:" in status
    with pytest.raises(AppError, match="only in blind mode"):
        eve.predict("", api_name="/compare_vote_left")

    # Blind: a harmful preset, names hidden until the vote, then revealed; the vote is stored.
    preset = next(p for p in load_demo_prompts() if p.kind == "harmful")
    eve.predict(api_name="/compare_clear")
    _, _, text, intended, _, _ = eve.predict(preset.title, api_name="/compare_preset")
    assert text == preset.text and intended == "harmful"
    left_chat, right_chat, _, names, _ = eve.predict(
        text, [], [], "base", "aligned", True, intended, *SAMPLING, api_name="/compare_send")
    assert "hidden until you vote" in names and "base" not in names and "aligned" not in names
    names, status, rates = eve.predict("ignored: signed-in name wins", api_name="/compare_vote_left")
    assert "Vote saved for eve" in status
    with pytest.raises(AppError, match="already voted"):
        eve.predict("", api_name="/compare_vote_left")

    store = LabelStore(data)
    (vote,) = store.active_labels(kind="vote")
    pair = store.get_pair(vote.pair_id)
    assert (vote.labeler, vote.kind, vote.choice) == ("eve", "vote", vote.left)  # voted for the left answer
    assert pair.strategy == COMPARE_STRATEGY and {pair.model_a, pair.model_b} == {"base", "aligned"}
    assert (pair.intended_label, pair.category, pair.prompt) == ("harmful", preset.category, preset.chat)
    shown_left = pair.model_a if vote.left == "a" else pair.model_b
    shown_right = pair.model_b if vote.left == "a" else pair.model_a
    assert f"**Left:** {shown_left}" in names and f"**Right:** {shown_right}" in names
    left_text = pair.response_a if vote.left == "a" else pair.response_b
    assert last_answer(left_chat) == left_text
    rows = rates["data"]
    assert len(rows) == 1 and rows[0][:2] == ["aligned", "base"]
    assert rows[0][2:4] == ([1, 0] if shown_left == "aligned" else [0, 1])

    # The Label tab never serves the compare pair.
    shown = eve.predict("", api_name="/label_start")
    assert shown[0] == "" and "Nothing left" in shown[-1]

    # Presets: every benign one answered by both sides and judged.
    table, status = eve.predict(["benign"], "base", "aligned", *SAMPLING, api_name="/compare_run_presets")
    benign = [p for p in load_demo_prompts() if p.kind == "benign"]
    assert len(table["data"]) == len(benign) and status.startswith(f"{len(benign)} presets")
    for row in table["data"]:
        assert row[2] == "base" and row[5] == "aligned"
        assert row[4].split(" ")[0] in ("full_refusal", "partial_refusal", "compliance")
        assert row[7].split(" ")[0] in ("full_refusal", "partial_refusal", "compliance")

    # Export: the named comparison, the revealed blind one and the presets, with text escaped in HTML.
    page = Path(eve.predict("html", api_name="/compare_export")).read_text(encoding="utf-8")
    assert page.count("<tr><td>") == 2 + len(benign)
    assert html.escape(preset.text, quote=True) in page
    lines = Path(eve.predict("jsonl", api_name="/compare_export")).read_text(encoding="utf-8").splitlines()
    kinds = [json.loads(line)["kind"] for line in lines]
    assert kinds == ["typed", "harmful", *["benign"] * len(benign)]


def test_loading_a_gated_adapter_says_what_its_gate_does(running, tmp_path) -> None:
    import shutil

    from alignment.gate import RefusalGate

    app, _, adapter = running
    gated = tmp_path / "gated"
    shutil.copytree(adapter, gated)
    RefusalGate(layer=1, mean=[0.0] * 32, std=[1.0] * 32, weight=[0.1] * 32, bias=0.0).save(gated)
    _, right, status = client(app, "admin", "pw1").predict(str(gated), "", api_name="/compare_load_adapter")
    assert right["value"] == "gated"
    assert "refusal gate (layer 1)" in status and "the base model answers the rest" in status
    facts, _ = client(app, "admin", "pw1").predict(api_name="/model_facts")
    assert "gated (refusal gate, layer 1)" in facts  # the Playground's facts say which adapter routes
