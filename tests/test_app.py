"""The app end to end over HTTP: launch on a free port, chat through gradio_client, fail clearly on a bad model."""

import subprocess
import sys

import pytest

from tests.apprunner import REPO, RunningApp
from tests.conftest import free_port

pytestmark = pytest.mark.app


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    running = RunningApp(["--model", str(tiny_model_dir), "--data-dir", str(tmp_path_factory.mktemp("data"))],
                         free_port())
    yield running
    running.stop()


def text_of(message) -> str:
    content = message["content"]
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content)
    return content


def test_playground_chat_returns_model_text(app):
    from gradio_client import Client

    client = Client(app.url, verbose=False)
    history, cleared = client.predict("Create a task: water the plants", "base", 16, True, 1.0, 1.0, 5, "",
                                      api_name="/chat")
    assert cleared == ""
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert text_of(history[0]) == "Create a task: water the plants"
    reply = text_of(history[1])
    assert reply.strip(), "the model's answer is empty"
    client.predict(api_name="/clear_chat")
    again, _ = client.predict("Create a task: water the plants", "base", 16, True, 1.0, 1.0, 5, "",
                              api_name="/chat")
    assert text_of(again[1]) == reply, "the same seed should give the same text"


def test_chat_keeps_turns_and_escapes_html_for_display(app):
    from gradio_client import Client

    client = Client(app.url, verbose=False)
    client.predict("first <b>turn</b>", "base", 8, True, 1.0, 1.0, 1, "", api_name="/chat")
    history, _ = client.predict("second turn", "base", 8, True, 1.0, 1.0, 1, "", api_name="/chat")
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert text_of(history[0]) == "first &lt;b&gt;turn&lt;/b&gt;"


def test_model_facts_name_the_device(app):
    from gradio_client import Client

    facts, _ = Client(app.url, verbose=False).predict(api_name="/model_facts")
    assert "| Device | cpu |" in facts and "Parameters" in facts


def test_empty_message_is_a_clear_error(app):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Type a message"):
        Client(app.url, verbose=False).predict("  ", "base", 16, False, 0.7, 0.9, 0, "", api_name="/chat")


def test_bad_model_exits_with_a_message(tmp_path):
    result = subprocess.run([sys.executable, "app.py", "--model", str(tmp_path / "missing"), "--port",
                             str(free_port())], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "error:" in result.stderr and "Traceback" not in result.stderr


def test_on_a_space_the_page_offers_hugging_face_sign_in(tiny_model_dir, tmp_path):
    from gradio_client import Client

    running = RunningApp(["--model", str(tiny_model_dir), "--data-dir", str(tmp_path), "--lazy"], free_port(),
                         # What a Space with hf_oauth sets; nothing here contacts huggingface.co until someone signs in.
                         env={"SYSTEM": "spaces", "SPACE_ID": "owner/align-studio", "SPACE_AUTHOR_NAME": "owner",
                              "OAUTH_CLIENT_ID": "test-client", "OAUTH_CLIENT_SECRET": "test-secret",
                              "OAUTH_SCOPES": "openid profile", "OPENID_PROVIDER_URL": "http://127.0.0.1:9"})
    try:
        config = Client(running.url, verbose=False).config
        labels = [str(component.get("props", {}).get("value", "")) for component in config["components"]
                  if component.get("type") == "button"]
        assert any("Sign in with Hugging Face" in label for label in labels), labels
    finally:
        running.stop()
