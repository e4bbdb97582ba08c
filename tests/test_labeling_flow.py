"""The labeling issue's "done when", end to end through the running app on the bundled model: load a built-in
prompt set on the Generate tab, generate 20 pairs, label all 20 on the Label tab, export .jsonl on the Dataset
tab, and train one DPO step on that file as is (on a tiny random model, so the step itself stays quick)."""

from __future__ import annotations

import json
import math

import pytest

from labeling.pairs import DEFAULT_SAFETY_PROMPT
from tests.apprunner import RunningApp
from tests.conftest import free_port, train_one_dpo_step

pytestmark = [pytest.mark.slow, pytest.mark.app]


def test_generate_label_export_train(tmp_path, tiny_model_dir, bundled_tokenizer, monkeypatch):
    from gradio_client import Client

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    app = RunningApp(["--model", "bundled", "--data-dir", str(tmp_path / "data")], free_port(),
                     env={"HF_HUB_OFFLINE": "1"})
    try:
        admin = Client(app.url, verbose=False)
        _, message = admin.predict(["benign", "harmful"], [], 10, 7, api_name="/prompts_builtin")
        assert "the list has 20" in message, message
        # Equal temperatures: both sides come from one generate call with n=2, the cheapest pair job.
        result = admin.predict("two_samples", 0.9, 0.9, 0.9, DEFAULT_SAFETY_PROMPT, None, 32, 11, 20,
                               api_name="/generate_pairs")
        assert result.startswith("Done: 20 new pairs"), result

        labeler = Client(app.url, verbose=False)
        shown = labeler.predict("flow-tester", api_name="/label_start")
        chosen = {}
        for i in range(20):
            prompt, left, right = shown[0], shown[1], shown[2]
            assert prompt, f"pair {i + 1} of 20 was not shown: {shown[-1]}"
            action = "left" if i % 2 else "right"
            chosen[prompt] = left if action == "left" else right
            shown = labeler.predict("", "", api_name=f"/label_{action}")
            assert shown[-1].startswith("Saved."), shown
        assert shown[0] == "", "a 21st pair was shown"

        path, message = admin.predict(1, api_name="/dataset_export_jsonl")
    finally:
        app.stop()
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    assert len(rows) == 20 and message.startswith("Exported 20 preference rows")
    assert {row["prompt"][-1]["content"]: row["chosen"][0]["content"] for row in rows} == chosen
    assert {row["intended_label"] for row in rows} == {"benign", "harmful"}

    import datasets

    dataset = datasets.load_dataset("json", data_files=path, split="train")
    trainer = train_one_dpo_step(dataset, tiny_model_dir, bundled_tokenizer, tmp_path / "run", max_length=96)
    assert trainer.state.global_step == 1
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses and math.isfinite(losses[0])
