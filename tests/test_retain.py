"""The retain loss: prompt files, batching, the drift measure, and training that keeps benign hidden states put."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alignment.retain import (
    RetainBatches,
    RetainDataError,
    adapted_layer_range,
    encode_prompts,
    last_tokens_mask,
    main,
    pad_batch,
    read_retain_prompts,
    relative_drift,
    retain_drift,
)
from alignment.settings import SettingsError
from alignment.train import DatasetError, train
from alignment.train_config import TrainConfig


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def pair(i: int, label: str) -> dict:
    if label == "harmful":
        return {"prompt": [{"role": "user", "content": f"How do I hurt person {i}?"}],
                "chosen": [{"role": "assistant", "content": "I can't help with hurting anyone."}],
                "rejected": [{"role": "assistant", "content": f"Sure, step {i}: find them."}], "label": label}
    return {"prompt": [{"role": "user", "content": f"How do I bake bread number {i}?"}],
            "chosen": [{"role": "assistant", "content": f"Mix flour, water and yeast, then bake {i} loaves."}],
            "rejected": [{"role": "assistant", "content": "I can't help with that."}], "label": label}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    rows = [pair(i, "harmful" if i % 2 else "benign") for i in range(16)]
    return write_jsonl(tmp_path_factory.mktemp("retain") / "pairs.jsonl", rows)


def test_prompts_come_as_messages_filtered_by_label(pairs, tmp_path):
    benign = read_retain_prompts(pairs, "benign")
    assert len(benign) == 8 and all("bread" in p[0]["content"] for p in benign)
    assert len(read_retain_prompts(pairs)) == 16
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "Name a colour."}])
    assert read_retain_prompts(plain) == [[{"role": "user", "content": "Name a colour."}]]


@pytest.mark.parametrize("content, label, message", [
    (None, None, "does not exist"),
    ('{"prompt": "x", "label": "harmful"}\n', "benign", "no prompts with label 'benign'"),
    ('{"prompt": "x"}\nnot json\n', None, "line 2 is not valid JSON"),
    ('{"text": "x"}\n', None, "row 1 has no 'prompt' field"),
    ('{"prompt": 7}\n', None, "must be text or a list of chat messages"),
])
def test_bad_prompt_files_are_named(tmp_path, content, label, message):
    path = tmp_path / "retain.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(RetainDataError, match=message):
        read_retain_prompts(path, label)


def test_batches_visit_every_prompt_once_per_epoch():
    batches = RetainBatches([[i] for i in range(5)], batch_size=2, seed=3)
    seen = [ids[0] for _ in range(5) for ids in next(batches)]  # two epochs of 5
    assert sorted(seen) == sorted(list(range(5)) * 2)
    again = RetainBatches([[i] for i in range(5)], batch_size=2, seed=3)
    assert [ids[0] for _ in range(5) for ids in next(again)] == seen


def test_pad_batch_masks_the_padding():
    input_ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_last_tokens_mask_keeps_each_rows_end():
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    assert last_tokens_mask(mask, 2).tolist() == [[0, 0, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]]
    assert last_tokens_mask(mask, 0).tolist() == mask.tolist()


def test_relative_drift_is_per_token_and_ignores_padding():
    base = torch.tensor([[[3.0, 4.0], [100.0, 0.0], [1.0, 1.0]]])  # a huge-norm token does not dominate
    adapted = base.clone()
    adapted[0, 0] = torch.tensor([0.0, 0.0])  # drift |b|²/|b|² = 1 on token 0
    adapted[0, 2] = torch.tensor([50.0, 50.0])  # padding: ignored
    mask = torch.tensor([[1, 1, 0]])
    assert relative_drift([adapted], [base], mask).item() == pytest.approx(0.5)
    assert relative_drift([base, base], [base, base], mask).item() == 0.0


def test_drift_is_zero_for_a_fresh_adapter_and_trains_the_adapter(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    top = model.config.num_hidden_layers - 1
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                             layers_to_transform=[top], task_type="CAUSAL_LM"))
    assert adapted_layer_range(model) == (top + 1, top + 1)
    input_ids, mask = pad_batch(encode_prompts(tokenizer, [[{"role": "user", "content": "Hi there"}],
                                                           [{"role": "user", "content": "Bake bread?"}]]), 0)
    assert retain_drift(model, input_ids, mask).item() == 0.0  # LoRA B starts at zero: adapter = base
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    drift = retain_drift(model, input_ids, mask)
    assert drift.item() > 0
    assert retain_drift(model, input_ids, mask, last_tokens=1).item() != pytest.approx(drift.item())
    drift.backward()
    grads = {name: param.grad for name, param in model.named_parameters() if param.requires_grad}
    assert grads and all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


def config(model_dir, dataset, output_dir, **changes) -> TrainConfig:
    values = dict(model=str(model_dir), dataset=str(dataset), output_dir=str(output_dir), run_name="tiny",
                  device="cpu", max_steps=6, per_device_train_batch_size=2, gradient_accumulation_steps=1,
                  learning_rate=5e-2, max_length=64, lora_r=4, lora_alpha=8, lora_dropout=0.0, eval_split=0.0,
                  save_steps=100, logging_steps=1, warmup=0.0, loss_type=["sigmoid", "sft"])
    values.update(changes)
    return TrainConfig(**values)


def test_training_with_the_retain_loss_keeps_benign_prompts_closer_to_the_base(tiny_model_dir, pairs, tmp_path,
                                                                                capsys):
    plain = train(config(tiny_model_dir, pairs, tmp_path / "plain"))
    logs: list[dict] = []
    kept = train(config(tiny_model_dir, pairs, tmp_path / "kept", retain_weight=50.0, retain_prompts=str(pairs),
                        retain_label="benign"), on_log=logs.append)
    assert [r["retain_drift"] >= 0 for r in logs if "loss" in r] == [True] * 6  # logged at every step

    def drift(adapter: str) -> float:
        capsys.readouterr()
        assert main(["--adapter", adapter, "--prompts", str(pairs), "--label", "benign",
                     "--model", str(tiny_model_dir)]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["prompts"] == 8
        return result["mean_drift"]

    assert drift(plain.adapter_dir) > 0
    assert drift(kept.adapter_dir) < 0.5 * drift(plain.adapter_dir)


def test_retain_settings_are_checked(tiny_model_dir, pairs, tmp_path):
    with pytest.raises(SettingsError, match="needs retain_prompts"):
        config(tiny_model_dir, pairs, tmp_path / "run", retain_weight=1.0)
    with pytest.raises(SettingsError, match="needs LoRA"):
        config(tiny_model_dir, pairs, tmp_path / "run", retain_weight=1.0, retain_prompts=str(pairs), lora_r=0)
    with pytest.raises(DatasetError, match="no prompts with label 'safe'"):
        train(config(tiny_model_dir, pairs, tmp_path / "run", retain_weight=1.0, retain_prompts=str(pairs),
                     retain_label="safe"))
    assert not (tmp_path / "run" / "adapter").exists()


def test_cli_reports_bad_input_with_exit_2(pairs, tmp_path, capsys, tiny_model_dir):
    assert main(["--adapter", str(tmp_path / "nope"), "--prompts", str(pairs), "--model", str(tiny_model_dir)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--adapter", str(tmp_path), "--prompts", str(tmp_path / "none.jsonl")]) == 2
    assert "Retain prompts" in capsys.readouterr().err
    assert main(["--adapter", str(tmp_path), "--prompts", str(pairs), "--last-tokens", "-1"]) == 2
    assert "--last-tokens" in capsys.readouterr().err
