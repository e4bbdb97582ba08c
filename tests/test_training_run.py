"""TrainingManager: one run at a time, live status, cancel within a step, failures reported, adapters listed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from alignment.train_config import TrainConfig
from alignment.training_run import RunBusy, TrainingManager, list_adapters

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pair(i: int) -> dict:
    return {"prompt": [{"role": "user", "content": f"Question {i}?"}],
            "chosen": [{"role": "assistant", "content": f"A careful, safe answer to {i}."}],
            "rejected": [{"role": "assistant", "content": f"A careless answer to {i}."}]}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "prefs.jsonl"
    path.write_text("".join(json.dumps(pair(i)) + "\n" for i in range(12)))
    return path


def config(model_dir, dataset, runs: Path, name: str, **changes) -> TrainConfig:
    values = dict(model=str(model_dir), dataset=str(dataset), run_name=name, output_dir=str(runs / name),
                  device="cpu", max_steps=3, per_device_train_batch_size=2, max_length=48, lora_r=4, lora_alpha=8,
                  lora_dropout=0.0, eval_split=0.0, save_steps=100, learning_rate=1e-3)
    values.update(changes)
    return TrainConfig(**values)


def wait_for(predicate, timeout=300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_one_run_at_a_time_cancel_then_finish(tiny_model_dir, data, tmp_path):
    manager = TrainingManager()
    assert manager.status()["state"] == "idle"
    manager.start(config(tiny_model_dir, data, tmp_path, "long", max_steps=200))
    assert wait_for(lambda: manager.status()["step"] >= 1)
    with pytest.raises(RunBusy, match=r"run long is at step \d+/200"):
        manager.start(config(tiny_model_dir, data, tmp_path, "second"))
    assert manager.cancel()
    assert manager.status()["state"] in ("cancelling", "cancelled")
    assert manager.wait(timeout=300)
    status = manager.status()
    assert status["state"] == "cancelled" and status["step"] < 200
    assert status["history"] and all("step" in r for r in status["history"])

    manager.start(config(tiny_model_dir, data, tmp_path, "short"))
    assert manager.wait(timeout=300)
    status = manager.status()
    assert status["state"] == "finished", status["error"]
    assert status["step"] == status["max_steps"] == 3 and status["eta"] == 0.0
    assert "rewards/margins" in status["last_metrics"] and status["elapsed"] > 0
    adapters = manager.list_adapters(tmp_path)
    assert [a["run_name"] for a in adapters] == ["short"]  # the cancelled run left no adapter
    assert adapters[0]["base_model"] == str(tiny_model_dir) and "loss" in adapters[0]["metrics"]


def test_failure_is_reported_not_raised(tiny_model_dir, tmp_path):
    manager = TrainingManager()
    manager.start(config(tiny_model_dir, tmp_path / "missing.jsonl", tmp_path, "broken"))
    assert manager.wait(timeout=120)
    status = manager.status()
    assert status["state"] == "failed" and "does not exist" in status["error"]
    assert not manager.cancel()  # nothing to cancel


def test_list_adapters_skips_unfinished_and_broken(tmp_path):
    (tmp_path / "half" / "adapter").mkdir(parents=True)
    (tmp_path / "half" / "adapter" / "training_summary.json").write_text("{not json")
    (tmp_path / "half" / "adapter" / "adapter_config.json").write_text("{}")
    assert list_adapters(tmp_path) == []
    assert list_adapters(tmp_path / "nowhere") == []
