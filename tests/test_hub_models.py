"""push_adapter through the real huggingface_hub client against tests/hub_server.py (never the real Hub)."""

from __future__ import annotations

import json

import pytest

from alignment.hub_models import push_adapter
from labeling.hub import HubError
from tests.hub_server import ALICE_READ, ALICE_WRITE, BOB_WRITE, start_test_hub

WRITE, READ, BOB = ALICE_WRITE, ALICE_READ, BOB_WRITE
TOKENS = (WRITE, READ, BOB)
REPO = "alice/tiny-refusal-lora"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    server = start_test_hub(tmp_path / "hub-storage", monkeypatch)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, bundled_tokenizer):
    """A real LoRA adapter of a tiny model, with a card naming a local base folder (as a run on one writes)."""
    from peft import LoraConfig, get_peft_model

    from tests.conftest import make_tiny_model

    folder = tmp_path_factory.mktemp("run") / "adapter"
    model = get_peft_model(make_tiny_model(bundled_tokenizer),
                           LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.save_pretrained(folder)
    (folder / "README.md").write_text("---\nlibrary_name: peft\nbase_model: /tmp/some/local/model\n"
                                      "tags: [dpo, lora]\n---\n# tiny: LoRA adapter trained with DPO\n",
                                      encoding="utf-8")
    (folder / "training_summary.json").write_text(json.dumps({"run_name": "tiny"}), encoding="utf-8")
    return folder


def test_push_creates_private_model_repo_with_the_adapter(hub, adapter_dir):
    url = push_adapter(adapter_dir, REPO, token=WRITE)
    assert url.endswith(REPO)
    repo = hub.state.find("model", REPO)
    assert repo is not None and repo.private
    files = hub.files(REPO, repo_type="model")
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md", "training_summary.json"):
        assert files[name] == (adapter_dir / name).read_bytes() or name == "README.md", name
    card = files["README.md"].decode()
    assert "base_model: /tmp" not in card and "library_name: peft" in card and "# tiny" in card
    # The run's own card is left as it was.
    assert "base_model: /tmp/some/local/model" in (adapter_dir / "README.md").read_text()
    assert json.loads(files["adapter_config.json"])["r"] == 2


def test_repush_commits_only_changes_and_public_is_honoured(hub, adapter_dir, tmp_path):
    import shutil

    folder = shutil.copytree(adapter_dir, tmp_path / "run" / "adapter")
    push_adapter(folder, "alice/public-lora", token=WRITE, private=False)
    push_adapter(folder, "alice/public-lora", token=WRITE, private=False)  # nothing changed: no empty commit
    assert len(hub.commits("alice/public-lora", repo_type="model")) == 2  # initial + one upload
    (folder / "training_summary.json").write_text('{"run_name": "tiny", "global_step": 8}', encoding="utf-8")
    push_adapter(folder, "alice/public-lora", token=WRITE, private=False)
    assert len(hub.commits("alice/public-lora", repo_type="model")) == 3
    assert b"global_step" in hub.files("alice/public-lora", repo_type="model")["training_summary.json"]
    assert not hub.state.find("model", "alice/public-lora").private


def test_token_from_environment(hub, adapter_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", WRITE)
    push_adapter(adapter_dir, REPO)
    assert "adapter_config.json" in hub.files(REPO, repo_type="model")


@pytest.mark.parametrize(("token", "kind"), [(None, "no_token"), (READ, "read_only"), (BOB, "not_owner"),
                                             ("hf_unknowntoken012345", "invalid_token")])
def test_refusals_say_what_to_do_and_never_show_the_token(hub, adapter_dir, token, kind):
    with pytest.raises(HubError) as caught:
        push_adapter(adapter_dir, REPO, token=token)
    assert caught.value.kind == kind
    message = str(caught.value)
    assert not any(t in message for t in (*TOKENS, "hf_unknowntoken012345"))
    assert hub.state.find("model", REPO) is None


def test_not_an_adapter_folder_or_bad_repo_id(hub, tmp_path, adapter_dir):
    with pytest.raises(HubError, match="adapter_config.json") as caught:
        push_adapter(tmp_path, REPO, token=WRITE)
    assert caught.value.kind == "bad_input"
    with pytest.raises(HubError, match="OWNER/NAME"):
        push_adapter(adapter_dir, "no-slash", token=WRITE)


def test_hub_down_is_unreachable(hub, adapter_dir):
    hub.stop()
    with pytest.raises(HubError) as caught:
        push_adapter(adapter_dir, REPO, token=WRITE)
    assert caught.value.kind == "unreachable"
    assert WRITE not in str(caught.value)


def test_an_adapter_loaded_from_the_hub_brings_its_refusal_gate(hub, adapter_dir, tiny_model_dir, tmp_path,
                                                                 monkeypatch):
    import shutil

    import huggingface_hub.constants as hub_constants
    import huggingface_hub.hf_api

    from alignment.gate import RefusalGate
    from alignment.models import LoadSettings
    from alignment.registry import ModelRegistry

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    # Downloads build their URLs from constants read at import; a user sets HF_ENDPOINT before starting.
    monkeypatch.setattr(hub_constants, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", hub.endpoint)  # peft calls file_exists
    gated = tmp_path / "gated" / "adapter"
    shutil.copytree(adapter_dir, gated)
    gate = RefusalGate(layer=1, mean=[0.0] * 32, std=[1.0] * 32, weight=[0.1] * 32, bias=0.0,
                       fitted_on={"harmful": 5, "benign": 5})
    gate.save(gated)
    push_adapter(gated, REPO, token=WRITE, private=False)
    push_adapter(adapter_dir, "alice/plain-lora", token=WRITE, private=False)
    assert "refusal_gate.json" in hub.files(REPO, repo_type="model")

    registry = ModelRegistry(LoadSettings(model=str(tiny_model_dir), device="cpu"))
    assert registry.gate(registry.load_adapter(REPO)) == gate
    assert registry.gate(registry.load_adapter("alice/plain-lora")) is None
