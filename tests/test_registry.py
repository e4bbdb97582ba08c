"""The registry: an adapter on shared weights, the base side with it disabled, clear errors for bad adapters."""

import pytest
import torch

from alignment.generation import SamplingSettings, generate
from alignment.models import LoadSettings, ModelLoadError
from alignment.registry import BASE, ModelRegistry, adapter_base_model


def make_adapter(model_dir, out_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj",
                                                                                       "o_proj"],
                                                  init_lora_weights=False))
    peft_model.save_pretrained(out_dir)
    return out_dir


def test_adapter_and_base_share_weights_and_differ(tiny_model_dir, tmp_path):
    registry = ModelRegistry(LoadSettings(model=str(tiny_model_dir), device="cpu"))
    chats = [[{"role": "user", "content": "Create a task to water the plants"}]]
    settings = SamplingSettings(max_new_tokens=12, seed=3)
    with registry.side(BASE) as view:
        before = generate(view, chats, settings)[0][0].text
    before_params = sum(p.numel() for p in registry.loaded.model.parameters())
    name = registry.load_adapter(make_adapter(tiny_model_dir, tmp_path / "run1" / "adapter"))
    assert name == "run1" and registry.sides() == [BASE, "run1"]
    assert adapter_base_model(tmp_path / "run1" / "adapter") == str(tiny_model_dir)
    with registry.side(BASE) as view:
        base_again = generate(view, chats, settings)[0][0].text
    with registry.side("run1") as view:
        aligned = generate(view, chats, settings)[0][0].text
    assert base_again == before, "disabling the adapter must give back the base model exactly"
    assert aligned != before
    base_params = sum(p.numel() for n, p in registry.loaded.model.named_parameters() if "lora_" not in n)
    assert base_params == before_params, "loading an adapter must not copy the base weights"


def test_bad_adapter_folder_and_unknown_side(tiny_model_dir, tmp_path):
    registry = ModelRegistry(LoadSettings(model=str(tiny_model_dir), device="cpu"))
    with pytest.raises(ModelLoadError, match="adapter_config.json"):
        registry.load_adapter(tmp_path)
    with pytest.raises(ModelLoadError, match="No adapter named"):
        with registry.side("nope"):
            pass


def test_an_abandoned_stream_does_not_keep_the_model_locked(tiny_model_dir):
    registry = ModelRegistry(LoadSettings(model=str(tiny_model_dir), device="cpu"))
    chat = [{"role": "user", "content": "Create a task to water the plants"}]
    stream = registry.stream(BASE, chat, SamplingSettings(max_new_tokens=64, seed=1))
    next(stream)  # a browser that read one piece and went away
    lock = registry.loaded.lock
    assert lock.acquire(timeout=120), "the generating thread must release the lock when generation ends"
    lock.release()
    with registry.side(BASE) as view:
        assert generate(view, [chat], SamplingSettings(max_new_tokens=4, seed=1))[0][0].tokens > 0
