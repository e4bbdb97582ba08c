"""Browser end to end in headless Chromium: sign in, label with the keyboard and watch progress change, train a
tiny run from the Train tab and compare base and aligned; and check that HTML and script in prompts, answers
and chat messages are shown as text and never run. Screenshots land in test-artifacts/."""

import pytest

from labeling.records import LabelRecord, PairRecord, as_messages
from labeling.store import LabelStore
from tests.apprunner import RunningApp
from tests.browser import screenshot
from tests.conftest import free_port

pytestmark = pytest.mark.browser

XSS_A = '<img src=x onerror="window.__xss=1">hello'
XSS_B = "<script>window.__xss=2</script>world"


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("browser-data")
    store = LabelStore(data)
    store.add_pairs([PairRecord(prompt=as_messages(f"Summarise <b>note {i}</b>"), response_a=XSS_A,
                                response_b=XSS_B, strategy="test", model_a="m", model_b="m") for i in range(3)])
    # Already-labelled pairs for the training step (k=1, so the Label tab never serves them).
    trained = [PairRecord(prompt=as_messages(f"Plan task {i} for the week"), response_a=f"Here is a plan for task {i}.",
                          response_b="I can't help with that.", strategy="seed", model_a="m", model_b="m")
               for i in range(8)]
    store.add_pairs(trained)
    for pair in trained:
        store.record_label(LabelRecord(pair_id=pair.pair_id, labeler="seeder", choice="a", left="a"))
    store.close()
    running = RunningApp(["--model", str(tiny_model_dir), "--data-dir", str(data), "--runs-dir",
                          str(tmp_path_factory.mktemp("runs")), "--auth", "ann:pw-ann", "--auth", "bob:pw-bob",
                          "--admins", "ann"], free_port(), env={"OMP_NUM_THREADS": "1"})
    yield running, data
    running.stop()


def sign_in(page, url, user, password):
    page.goto(url)
    page.wait_for_selector("input[type=password]")
    page.locator("input").first.fill(user)
    page.locator("input[type=password]").fill(password)
    page.get_by_role("button", name="Login").click()
    page.get_by_role("tab", name="Label").wait_for()


def test_sign_in_and_label_with_the_keyboard(app, page):
    running, data = app
    sign_in(page, running.url, "bob", "pw-bob")
    page.get_by_role("tab", name="Label").click()
    page.get_by_role("button", name="Start labeling").click()
    page.get_by_text("You: 0 labels", exact=False).wait_for()
    request = page.get_by_label("Request")
    page.wait_for_function("() => [...document.querySelectorAll('textarea')].some(t => t.value.includes('note'))")
    shown = request.input_value()
    page.locator("body").click(position={"x": 5, "y": 5})  # focus out of any text box so keys reach the page
    page.keyboard.press("1")
    page.get_by_text("You: 1 labels", exact=False).wait_for()
    screenshot(page, "label-tab")
    labels = [label for label in LabelStore(data).active_labels() if label.labeler == "bob"]
    assert len(labels) == 1
    assert shown.startswith("Summarise <b>note")


def test_untrusted_text_is_shown_as_text_and_runs_nothing(app, page):
    running, _ = app
    sign_in(page, running.url, "ann", "pw-ann")
    page.get_by_role("tab", name="Label").click()
    page.get_by_role("button", name="Start labeling").click()
    page.wait_for_function("() => [...document.querySelectorAll('textarea')].some(t => t.value.includes('onerror'))")
    values = page.locator("textarea").evaluate_all("els => els.map(e => e.value)")
    assert XSS_A in values and XSS_B in values
    # Chat: the user's own message is rendered by the Chatbot, which must not run it either.
    page.get_by_role("tab", name="Playground").click()
    box = page.get_by_label("Message")
    box.fill('<img src=x onerror="window.__xss=3"> and <script>window.__xss=4</script>')
    page.get_by_role("button", name="Send").click()
    page.wait_for_function("() => [...document.querySelectorAll('.message')].some("
                           "m => m.textContent.includes('onerror'))")
    page.wait_for_timeout(1000)
    screenshot(page, "xss-playground")
    bubbles = page.locator(".message").evaluate_all("els => els.map(e => e.textContent)")
    assert any('<img src=x onerror="window.__xss=3">' in text and "<script>" in text for text in bubbles), bubbles
    assert page.evaluate("window.__xss") is None
    assert page.locator("img[src='x']").count() == 0


def test_admin_trains_a_tiny_run_and_compares_base_with_aligned(app, page):
    running, _ = app
    sign_in(page, running.url, "ann", "pw-ann")
    page.get_by_role("tab", name="Train").click()
    page.get_by_text("No training run yet.").wait_for()  # the page's load event has filled the form
    page.get_by_label("Run name").fill("browser-run")
    for label, value in (("Max steps (-1 = by epochs)", "2"), ("Batch size", "2"), ("Gradient accumulation", "1"),
                         ("Max length (tokens)", "64"), ("Eval split", "0"), ("Save a checkpoint every N steps", "1")):
        page.get_by_label(label, exact=True).fill(value)
    page.get_by_role("button", name="Start training").click()
    page.get_by_text("Run browser-run: finished").wait_for(timeout=240_000)
    screenshot(page, "train-tab")
    assert page.locator("code", has_text="/browser-run/adapter").count() >= 1
    # The Train tab's own button (Compare's loader is covered over gradio_client); its answer shows beside it.
    page.get_by_role("button", name="Load as aligned model").click()
    page.get_by_text("Loaded adapter browser-run", exact=False).wait_for(timeout=120_000)

    page.get_by_role("tab", name="Compare").click()
    right = page.get_by_label("Right side")
    right.fill("browser-run")
    right.press("Enter")
    page.wait_for_timeout(1500)  # let the side change settle: it resets the comparison
    page.get_by_label("Message (sent to both sides)").fill("Create a task to water the plants")
    page.get_by_role("button", name="Send to both").click()
    try:
        page.get_by_text("Judge:", exact=False).first.wait_for(timeout=180_000)
    finally:
        screenshot(page, "compare-tab")
    answers = page.locator(".message").evaluate_all("els => els.map(e => e.textContent)")
    assert sum("water the plants" in text for text in answers) >= 2, answers
