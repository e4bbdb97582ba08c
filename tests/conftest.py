"""Shared fixtures: tiny random chat models for fast unit tests, and the bundled model's tokenizer.

Tiny models are built from a config (hidden size 32, 2 layers) with the bundled SmolLM2 tokenizer, so they
use a real chat template and vocabulary but load in milliseconds. Nothing here touches the Hugging Face Hub.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

pytest_plugins = ["tests.browser"]  # the browser and page fixtures

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def bundled_dir() -> Path:
    """The converted (safetensors) folder of the bundled model; converts once per cache dir."""
    from alignment.models import resolve_source

    return Path(resolve_source("bundled")[0])


@pytest.fixture(scope="session")
def bundled_tokenizer(bundled_dir):
    from transformers import AutoTokenizer

    from alignment.models import prepare_tokenizer

    return prepare_tokenizer(AutoTokenizer.from_pretrained(bundled_dir))


def make_tiny_model(tokenizer, seed: int = 0, hidden_size: int = 32):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=hidden_size, intermediate_size=hidden_size * 2, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, bundled_tokenizer) -> Path:
    """A saved tiny random model folder, usable anywhere a model name is accepted (``--model DIR``)."""
    folder = tmp_path_factory.mktemp("tiny-model")
    make_tiny_model(bundled_tokenizer).save_pretrained(folder)
    bundled_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir):
    """A LoadedModel of the tiny random model on CPU (shared: do not attach adapters to it in tests)."""
    from alignment.models import LoadSettings, load_model

    return load_model(LoadSettings(model=str(tiny_model_dir), device="cpu"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_one_dpo_step(dataset, model_dir, tokenizer, output_dir, max_length: int = 64):
    """TRL's DPOTrainer, one step on a tiny model, as the tests use to prove a dataset is accepted as is."""
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    config = DPOConfig(output_dir=str(output_dir), max_steps=1, per_device_train_batch_size=2,
                       max_length=max_length, report_to="none", gradient_checkpointing=False, use_cpu=True,
                       logging_steps=1, save_strategy="no", dataset_num_proc=None)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=config,
                         train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    return trainer
