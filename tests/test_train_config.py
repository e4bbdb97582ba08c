"""TrainConfig validation, recipe loading and the trl.DPOConfig it builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignment.settings import SettingsError, field_help
from alignment.train_config import TrainConfig, load_train_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_every_field_has_help():
    assert all(text.strip() for text in field_help(TrainConfig).values())


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads(recipe):
    import yaml

    if "train" in yaml.safe_load(recipe.read_text()):
        # A pipeline recipe (alignment.outcome): its training part is a TrainConfig under `train:`.
        from alignment.outcome import build_train_config, load_outcome_config

        outcome, train = load_outcome_config(recipe)
        output_dir = Path("runs") / train["run_name"]
        config = build_train_config(train, outcome, output_dir / "data" / "pairs.jsonl", output_dir)
    else:
        config = load_train_config(recipe)
    assert config.run_name
    assert config.output_dir == str(Path("runs") / config.run_name)


def test_recipes_cover_cpu_and_t4():
    names = {p.name for p in RECIPES}
    assert {"cpu-lora.yaml", "t4-qlora.yaml"} <= names
    t4 = load_train_config(Path(RECIPES[0]).parent / "t4-qlora.yaml")
    assert t4.load_in_4bit and t4.gradient_checkpointing and t4.precision == "fp16"


def test_overrides_are_typed():
    config = load_train_config(RECIPES[0], ["beta=0.25", "lora_target_modules=[q_proj, v_proj]", "max_steps=7"])
    assert config.beta == 0.25 and config.max_steps == 7
    assert config.target_modules() == ["q_proj", "v_proj"]


@pytest.mark.parametrize("changes, words", [
    ({"beta": 0}, "beta"),
    ({"loss_type": "nonsense"}, "loss_type"),
    ({"loss_type": ["sigmoid", "bogus"]}, "bogus"),
    ({"warmup": 1.5}, "warmup"),
    ({"max_steps": 0}, "max_steps"),
    ({"per_device_train_batch_size": 0}, "per_device_train_batch_size"),
    ({"precision": "fp8"}, "precision"),
    ({"precision": "fp16", "device": "cpu"}, "fp32"),
    ({"load_in_4bit": True, "lora_r": 0}, "lora_r"),
    ({"lora_target_modules": ["lm_head"]}, "lm_head"),
    ({"run_name": "a/b"}, "run_name"),
    ({"eval_split": 0.9}, "eval_split"),
    ({"merge_after": True, "load_in_4bit": True}, "merge_after"),
    ({"refusal_gate": True, "lora_r": 0}, "refusal_gate .*LoRA"),
    ({"refusal_gate": True, "merge_after": True}, "no base model for the refusal gate"),
    ({"refusal_gate": True, "load_in_4bit": True, "device": "cuda"}, "refusal_gate reads the base model's 16-bit"),
    ({"lora_layers": -1}, "lora_layers"),
    ({"lora_layers": 4, "lora_r": 0}, "lora_layers"),
    ({"cache_frozen_layers": True, "lora_layers": 15}, "needs precompute_reference: true"),
    ({"reference_batch_size": -1}, "reference_batch_size"),
    ({"cache_frozen_layers": True, "precompute_reference": True}, "lora_layers above 0"),
    ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0]}, "one weight per loss"),
    ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, -0.5]}, "loss_weights"),
    ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, "half"]}, "number"),
])
def test_bad_values_say_what_to_change(changes, words):
    with pytest.raises(SettingsError, match=words):
        TrainConfig(**changes)


def test_unknown_recipe_key_is_named(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("beta: 0.1\nmax_prompt_length: 128\n")
    with pytest.raises(SettingsError, match="max_prompt_length"):
        load_train_config(recipe)


def test_to_dpo_config_on_cpu(tmp_path):
    config = TrainConfig(device="cpu", output_dir=str(tmp_path), loss_type=["sigmoid", "sft"], warmup=0.2,
                         gradient_checkpointing=False, learning_rate=3e-5, max_length=128)
    dpo = config.to_dpo_config()
    assert dpo.use_cpu and not dpo.fp16 and not dpo.bf16  # TRL would default bf16 on; we are explicit
    assert dpo.gradient_checkpointing is False
    assert dpo.loss_type == ["sigmoid", "sft"] and dpo.loss_weights is None
    weighted = TrainConfig(device="cpu", output_dir=str(tmp_path), loss_type=["sigmoid", "sft"],
                           loss_weights=[1, 0.25]).to_dpo_config()
    assert weighted.loss_weights == [1.0, 0.25]
    assert dpo.warmup_steps == 0.2 and dpo.get_warmup_steps(100) == 20
    assert dpo.max_length == 128 and dpo.learning_rate == 3e-5
    assert dpo.report_to == [] or dpo.report_to == "none" or dpo.report_to == ["none"]
    assert Path(dpo.output_dir) == tmp_path / "checkpoints"


def test_lora_layers_adapt_only_the_top_layers():
    names = ["q_proj", "v_proj", "down_proj"]
    lora = TrainConfig(lora_layers=3).peft_config(num_layers=10, linear_names=names)
    assert list(lora.layers_to_transform) == [7, 8, 9] and set(lora.target_modules) == set(names)
    assert TrainConfig(lora_layers=3, lora_target_modules=["q_proj"]).peft_config(10).target_modules == {"q_proj"}
    assert TrainConfig(lora_layers=0).peft_config(num_layers=10).layers_to_transform is None
    assert TrainConfig(lora_layers=12).peft_config(num_layers=10).layers_to_transform is None  # more than there are


def test_precompute_reference_reaches_trl(tmp_path):
    dpo = TrainConfig(device="cpu", output_dir=str(tmp_path), precompute_reference=True).to_dpo_config()
    assert dpo.precompute_ref_log_probs is True
    assert TrainConfig(device="cpu", output_dir=str(tmp_path)).to_dpo_config().precompute_ref_log_probs is False
    # The precompute's batch: 8 pairs, the train batch if larger, or reference_batch_size when set.
    assert dpo.precompute_ref_batch_size == 8
    assert TrainConfig(device="cpu", output_dir=str(tmp_path), precompute_reference=True,
                       per_device_train_batch_size=16).to_dpo_config().precompute_ref_batch_size == 16
    assert TrainConfig(device="cpu", output_dir=str(tmp_path), precompute_reference=True,
                       reference_batch_size=2).to_dpo_config().precompute_ref_batch_size == 2


def test_bf16_on_cpu_only_where_the_cpu_has_it():
    from alignment.train_config import cpu_has_native_bf16

    if cpu_has_native_bf16():
        assert TrainConfig(device="cpu", precision="bf16").resolved_precision() == "bf16"
    else:
        with pytest.raises(SettingsError, match="native bf16"):
            TrainConfig(device="cpu", precision="bf16")
    assert TrainConfig(device="cpu").resolved_precision() == "fp32"  # auto stays fp32 on CPU
