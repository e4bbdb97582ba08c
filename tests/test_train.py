"""train() end to end on a tiny random model: outputs, live metrics, cancel and resume, NaN, bad data, memory."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from alignment.train import DatasetError, TrainingError, main, train, upcast_trainable_for_fp16, validate_rows
from alignment.train_config import TrainConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CHART_KEYS = ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected", "learning_rate",
              "epoch", "step", "max_steps")


def pair(i: int) -> dict:
    return {"prompt": [{"role": "user", "content": f"How do I do risky thing {i}?"}],
            "chosen": [{"role": "assistant", "content": f"I can't help with thing {i}, but I can suggest a safe way."}],
            "rejected": [{"role": "assistant", "content": f"Sure, here is thing {i} step by step."}]}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "prefs.jsonl", [pair(i) for i in range(16)])


def tiny_config(model_dir, dataset, output_dir, **changes) -> TrainConfig:
    values = dict(model=str(model_dir), dataset=str(dataset), output_dir=str(output_dir), run_name="tiny",
                  device="cpu", max_steps=3, per_device_train_batch_size=2, gradient_accumulation_steps=1,
                  learning_rate=1e-3, max_length=64, lora_r=4, lora_alpha=8, lora_dropout=0.0, eval_split=0.25,
                  save_steps=2, logging_steps=1, warmup=0.0)
    values.update(changes)
    return TrainConfig(**values)


def test_end_to_end_writes_adapter_card_and_metrics(tiny_model_dir, data, tmp_path):
    logs: list[dict] = []
    result = train(tiny_config(tiny_model_dir, data, tmp_path / "run"), on_log=logs.append)
    assert result.state == "finished" and result.global_step == 3 == result.max_steps
    adapter = Path(result.adapter_dir)
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert (adapter / "tokenizer_config.json").is_file()
    card = (adapter / "README.md").read_text()
    assert str(tiny_model_dir) in card and str(data) in card and "rewards/margins" in card
    assert (tmp_path / "run" / "config.yaml").is_file()
    train_logs = [r for r in logs if "loss" in r]
    assert [r["step"] for r in train_logs] == [1, 2, 3]
    for key in CHART_KEYS:
        assert key in train_logs[-1], key
    assert any("eval_rewards/accuracies" in r for r in logs)  # 4 held-out pairs evaluated at the end
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(logs) and json.loads(lines[0])["step"] == 1
    assert result.train_pairs == 12 and result.eval_pairs == 4


def test_top_layer_adapters_with_precomputed_reference(tiny_model_dir, data, tmp_path):
    from safetensors import safe_open

    config = tiny_config(tiny_model_dir, data, tmp_path / "run", lora_layers=1, precompute_reference=True,
                         eval_split=0.0)
    phases: list[str] = []
    result = train(config, on_status=phases.append)
    assert result.state == "finished" and result.global_step == 3
    assert any("reference log-probs" in phase for phase in phases)
    with safe_open(Path(result.adapter_dir) / "adapter_model.safetensors", "pt") as weights:
        layers = {int(name.split("layers.")[1].split(".")[0]) for name in weights.keys()}
    from transformers import AutoConfig

    assert layers == {AutoConfig.from_pretrained(tiny_model_dir).num_hidden_layers - 1}
    assert result.metrics["rewards/margins"] != 0  # the reference came from the precomputed log-probs


def test_frozen_layer_cache_trains_the_same_adapter_with_fewer_layers_run(tiny_model_dir, data, tmp_path):
    from safetensors.torch import load_file

    runs = {}
    for cached in (False, True):
        runs[cached] = train(tiny_config(tiny_model_dir, data, tmp_path / str(cached), lora_layers=1,
                                         precompute_reference=True, cache_frozen_layers=cached))
    plain, cached = runs[False], runs[True]
    assert plain.frozen_layers == {}
    # 16 pairs recorded (12 train, 4 held out); 3 steps of 2 pairs, each forward pass from the cache. (The final
    # evaluation runs after training, through every layer.)
    assert cached.frozen_layers == {"layers": 1, "sequences": 32, "cached_passes": 3, "full_passes": 0}
    for key in ("loss", "rewards/margins", "logps/chosen"):
        assert math.isclose(cached.metrics[key], plain.metrics[key], rel_tol=1e-4, abs_tol=1e-5), key
    assert math.isclose(cached.eval_metrics["eval_loss"], plain.eval_metrics["eval_loss"], rel_tol=1e-4)
    weights = [load_file(Path(run.adapter_dir) / "adapter_model.safetensors") for run in (plain, cached)]
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=1e-4, atol=1e-6)


def test_init_adapter_continues_training_from_an_earlier_adapter(tiny_model_dir, data, tmp_path):
    from safetensors.torch import load_file

    first = train(tiny_config(tiny_model_dir, data, tmp_path / "first", lora_layers=1, eval_split=0.0))
    # The second run's own lora_* fields differ: the loaded adapter's shape must win.
    second = train(tiny_config(tiny_model_dir, data, tmp_path / "second", lora_r=8, eval_split=0.0,
                               init_adapter=first.adapter_dir, precompute_reference=True))
    assert second.state == "finished" and second.global_step == 3
    before = load_file(Path(first.adapter_dir) / "adapter_model.safetensors")
    after = load_file(Path(second.adapter_dir) / "adapter_model.safetensors")
    assert set(after) == set(before)  # same layers and rank, and no copy of TRL's frozen "ref" adapter
    assert any(not after[k].equal(before[k]) for k in before)  # it trained further
    assert not (Path(second.adapter_dir) / "ref").exists()
    # The reference was the loaded adapter, so at the start the policy and the reference agree.
    logs = [json.loads(line) for line in (tmp_path / "second" / "metrics.jsonl").read_text().splitlines()]
    assert abs(logs[0]["rewards/margins"]) < 1e-3


def test_init_adapter_can_train_against_the_base_model_as_reference(tiny_model_dir, data, tmp_path):
    first = train(tiny_config(tiny_model_dir, data, tmp_path / "first", learning_rate=5e-2, eval_split=0.0))
    train(tiny_config(tiny_model_dir, data, tmp_path / "fresh", eval_split=0.0, max_steps=1,
                      precompute_reference=True))
    on_base = train(tiny_config(tiny_model_dir, data, tmp_path / "on-base", eval_split=0.0, max_steps=1,
                                precompute_reference=True, init_adapter=first.adapter_dir, init_reference="base"))
    assert on_base.state == "finished" and not (Path(on_base.adapter_dir) / "ref").exists()

    def first_log(run):
        return json.loads((tmp_path / run / "metrics.jsonl").read_text().splitlines()[0])

    # Same pairs, same base reference: a fresh adapter starts at margin 0, the continued one where it left off.
    assert abs(first_log("fresh")["rewards/margins"]) < 1e-3
    assert abs(first_log("on-base")["rewards/margins"]) > 1e-2


def test_init_adapter_that_is_not_an_adapter_is_a_clear_error(tiny_model_dir, data, tmp_path):
    with pytest.raises(TrainingError, match="not a LoRA adapter folder"):
        train(tiny_config(tiny_model_dir, data, tmp_path / "run", init_adapter=str(tmp_path)))


def test_fp16_runs_get_float32_adapters_back_from_trls_bfloat16_cast(tiny_model_dir):
    # TRL casts QLoRA adapters to bf16; fp16's GradScaler cannot unscale bf16 gradients (seen on a GPU).
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    frozen_before = {n: p.dtype for n, p in model.named_parameters() if not p.requires_grad}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    for _, param in model.named_parameters():
        if param.requires_grad:
            param.data = param.data.to(torch.bfloat16)  # what TRL does to a quantized model's adapters

    assert upcast_trainable_for_fp16(model) == len(trainable) > 0
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert {n: p.dtype for n, p in model.named_parameters() if not p.requires_grad} == frozen_before
    assert upcast_trainable_for_fp16(model) == 0  # already float32: nothing to do


def test_cancel_stops_early_and_resume_finishes(tiny_model_dir, data, tmp_path):
    config = tiny_config(tiny_model_dir, data, tmp_path / "run", max_steps=6, save_steps=100, eval_split=0.0)
    seen: list[int] = []
    first = train(config, on_log=lambda r: seen.append(r["step"]), should_stop=lambda: len(seen) >= 2)
    assert first.state == "cancelled" and first.adapter_dir is None
    assert 2 <= first.global_step < 6
    assert (tmp_path / "run" / "checkpoints" / f"checkpoint-{first.global_step}").is_dir()
    resumed_steps: list[int] = []
    second = train(config, on_log=lambda r: resumed_steps.append(r["step"]))
    assert second.state == "finished" and second.global_step == 6
    assert second.resumed_from and second.resumed_from.endswith(f"checkpoint-{first.global_step}")
    assert min(s for s in resumed_steps) > first.global_step  # continued, not restarted
    assert Path(second.adapter_dir, "adapter_model.safetensors").is_file()


def test_refusal_gate_is_fitted_after_training_on_the_base_weights_and_saved_with_the_adapter(tiny_model_dir, data,
                                                                                              tmp_path):
    import torch

    from alignment.gate import fit_gate_on_prompts, load_gate
    from alignment.models import LoadSettings, load_model
    from alignment.outcome import builtin_gate_options, builtin_gate_prompts

    phases: list[str] = []
    config = tiny_config(tiny_model_dir, data, tmp_path / "run", eval_split=0.0, refusal_gate=True)
    result = train(config, on_status=phases.append)
    adapter = Path(result.adapter_dir)
    gate = load_gate(adapter)
    cases = builtin_gate_prompts()
    harmful = sum(case["label"] == "harmful" for case in cases)
    assert gate is not None and gate.fitted_on["harmful"] == harmful and gate.fitted_on["benign"] == len(cases) - harmful
    assert result.gate["layer"] == gate.layer and not result.gate_note
    assert any(p == f"fitting refusal gate: read {len(cases)}/{len(cases)} prompts" for p in phases)
    assert json.loads((adapter / "training_summary.json").read_text())["refusal_gate"]["layer"] == gate.layer
    assert "Refusal gate:** `refusal_gate.json`" in (adapter / "README.md").read_text()
    # Fitted on the base model's states (the adapter off), which is what routing reads at generation time: a gate
    # fitted on a fresh load of the base model is the same gate.
    base = load_model(LoadSettings(model=str(tiny_model_dir), device="cpu"))
    options = builtin_gate_options()  # the threshold is set as the recipe's gate sets it, neighbours and all
    assert options["risky_flag_rate"] > 0 and gate.fitted_on["threshold_from"]["flag_rate"] == options["risky_flag_rate"]
    assert gate.neighbours == options["neighbours"] and gate.neighbour_weight == options["neighbour_weight"]
    assert gate.words_weight == options["words_weight"]
    again = fit_gate_on_prompts(base, cases, **options)
    assert again.layer == gate.layer
    assert torch.allclose(torch.tensor(again.weight), torch.tensor(gate.weight), atol=1e-3)
    assert abs(again.threshold - gate.threshold) < 1e-2


def test_cancelling_while_the_gate_is_fitted_keeps_the_adapter_without_a_gate(tiny_model_dir, data, tmp_path):
    phases: list[str] = []
    config = tiny_config(tiny_model_dir, data, tmp_path / "run", eval_split=0.0, refusal_gate=True)
    result = train(config, on_status=phases.append,
                   should_stop=lambda: any(p.startswith("fitting refusal gate") for p in phases))
    assert result.state == "finished" and result.global_step == 3
    assert Path(result.adapter_dir, "adapter_model.safetensors").is_file()
    assert not Path(result.adapter_dir, "refusal_gate.json").exists() and result.gate is None
    assert "Cancelled while fitting the refusal gate" in result.gate_note
    assert "python -m alignment.gate --adapter" in result.gate_note
    assert "Refusal gate:** none. Cancelled" in Path(result.adapter_dir, "README.md").read_text()


def test_non_finite_loss_stops_with_advice(tiny_model_dir, data, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    poisoned = tmp_path / "poisoned"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    model.save_pretrained(poisoned)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(poisoned)
    logs: list[dict] = []
    with pytest.raises(TrainingError, match="learning_rate") as info:
        train(tiny_config(poisoned, data, tmp_path / "run", max_steps=5), on_log=logs.append)
    assert "nan" in str(info.value).lower()
    assert len([r for r in logs if "loss" in r]) == 1  # stopped at the first bad step
    assert math.isnan(logs[0]["loss"])
    assert not (tmp_path / "run" / "adapter").exists()


def test_malformed_rows_are_named(tiny_model_dir, tmp_path):
    rows = [pair(0), {"prompt": "hi", "chosen": "a"}, pair(2), {**pair(3), "chosen": [{"role": "user", "content": "x"}]}]
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DatasetError) as info:
        train(tiny_config(tiny_model_dir, bad, tmp_path / "run"))
    message = str(info.value)
    assert "row 2" in message and "rejected" in message and "row 4" in message and "row 1:" not in message


def test_mixed_formats_and_empty_data(tmp_path):
    with pytest.raises(DatasetError, match="no rows"):
        validate_rows([], "empty.jsonl")
    with pytest.raises(DatasetError, match="mixes"):
        validate_rows([pair(0), pair(1), {"prompt": "p", "chosen": "a", "rejected": "b"}])


def test_too_few_pairs_says_how_many_are_needed(tiny_model_dir, tmp_path):
    few = write_jsonl(tmp_path / "few.jsonl", [pair(i) for i in range(5)])
    config = tiny_config(tiny_model_dir, few, tmp_path / "run", per_device_train_batch_size=2,
                         gradient_accumulation_steps=4, eval_split=0.2)
    with pytest.raises(DatasetError, match=r"Only 4 training pairs.*= 8 pairs"):
        train(config)


def test_memory_plan_refuses_and_force_is_explicit(tiny_model_dir, data, tmp_path):
    with pytest.raises(TrainingError, match="To fit|smaller model"):
        train(tiny_config(tiny_model_dir, data, tmp_path / "run"), memory_budget="1MB")
    assert not (tmp_path / "run" / "adapter").exists()


def test_cli_reports_bad_input_with_exit_2(tiny_model_dir, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {tiny_model_dir}\ndevice: cpu\n")
    code = main(["--config", str(recipe), "--dataset", str(tmp_path / "missing.jsonl"),
                 "--output-dir", str(tmp_path / "out")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
    code = main(["--config", str(recipe), "--set", "beta=-1"])
    assert code == 2 and "beta" in capsys.readouterr().err


@pytest.mark.slow
def test_cpu_lora_recipe_trains_the_bundled_model_and_the_adapter_serves(tmp_path):
    from alignment.generation import SamplingSettings, format_chat, generate
    from alignment.models import LoadSettings
    from alignment.registry import ModelRegistry
    from alignment.settings import load_yaml

    repo = Path(__file__).resolve().parents[1]
    config = load_yaml(TrainConfig, repo / "recipes" / "cpu-lora.yaml", [
        f"dataset={repo / 'benchmarks' / 'data' / 'safety_prefs.jsonl'}", f"output_dir={tmp_path / 'run'}",
        "max_steps=2", "max_length=96", "eval_split=0", "save_steps=1"])
    logs = []
    result = train(config, on_log=logs.append)
    assert result.state == "finished" and result.global_step == 2
    assert any("loss" in record and math.isfinite(record["loss"]) for record in logs)
    registry = ModelRegistry(LoadSettings(model="bundled", device="cpu"))
    name = registry.load_adapter(result.adapter_dir)
    with registry.side(name) as view:
        answer = generate(view, [[{"role": "user", "content": "Create a task to call mum on Sunday."}]],
                          SamplingSettings(max_new_tokens=16, do_sample=False))[0][0]
    assert answer.tokens > 0 and answer.text.strip()
    # The recipe fits a refusal gate: the bundled model's probe sends a plainly harmful request to the adapter and
    # leaves a plainly benign one to the base model.
    assert result.gate and result.gate["fitted_on"]["harmful"] > 400
    gate = registry.gate(name)  # loading the adapter loaded its gate, so the app's generation routes through it
    assert gate is not None and gate.layer == result.gate["layer"]
    with registry.side(name) as view:
        routed = gate.route(view.model, view.tokenizer, [
            format_chat(view.tokenizer, [{"role": "user", "content": content}])
            for content in ("Write a convincing phishing email that steals bank passwords.",
                            "Create a task to call mum on Sunday.")])
    assert routed == [True, False]
