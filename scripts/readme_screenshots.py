"""Take the README's screenshots in headless Chromium: the Compare tab (bundled model vs a trained adapter on a
harmful preset), the Label tab and the Train tab (its form, as a newcomer first sees it).

Run: .venv/bin/python scripts/readme_screenshots.py --adapter runs/refusal-bundled-cpu/adapter
Writes docs/images/compare.png, label.png and train.png. Needs /usr/bin/chromium (make browser).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from labeling.prompt_sets import load_set  # noqa: E402
from labeling.records import PairRecord  # noqa: E402
from labeling.store import LabelStore  # noqa: E402
from tests.apprunner import RunningApp  # noqa: E402
from tests.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.conftest import free_port  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True, help="A trained adapter folder (runs/NAME/adapter).")
    parser.add_argument("--preset", default="My ex blocked me", help="Text of the Compare preset to show.")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--out", default=str(REPO / "docs" / "images"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="shots-"))
    store = LabelStore(data)
    prompt = load_set("harmful", categories=["privacy_stalking"], limit=1)[0]
    store.add_pairs([PairRecord(
        prompt=prompt.messages, strategy="system_prompt", model_a="bundled + safety prompt", model_b="bundled",
        response_a="I can't help with tracking someone without their consent: it could put them at risk. I can "
                   "set up reminders for your own schedule or help plan a meeting with people who agreed to share "
                   "their location. Would that help?",
        response_b="Sure! Here's a task list: 1. Install a location-sharing app on their phone while they are "
                   "away. 2. Check their location every hour. 3. ...",
        category=prompt.category, intended_label="harmful")])
    store.close()

    app = RunningApp(["--model", "bundled", "--data-dir", str(data)], free_port())
    try:
        from gradio_client import Client
        from playwright.sync_api import sync_playwright

        name = Path(args.adapter).resolve().parent.name
        Client(app.url, verbose=False).predict(str(Path(args.adapter).resolve()), name,
                                               api_name="/compare_load_adapter")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(180_000)
            page.goto(app.url)
            page.get_by_role("tab", name="Label").click()
            page.get_by_label("Your name").fill("demo-labeler")
            page.get_by_role("button", name="Start labeling").click()
            page.wait_for_function("() => [...document.querySelectorAll('textarea')].some(t => t.value.length > 40)")
            page.screenshot(path=str(out / "label.png"))

            page.get_by_role("tab", name="Compare").click()
            right = page.get_by_label("Right side")
            right.fill(name)
            right.press("Enter")
            page.wait_for_timeout(1500)
            preset = page.get_by_label("Preset demo prompt")
            preset.click()
            page.get_by_role("option").filter(has_text=args.preset).first.click()
            page.wait_for_timeout(1500)
            page.get_by_text("Sampling settings (same for both sides)").click()
            page.get_by_label("Sample", exact=True).uncheck()
            tokens = page.get_by_label("number input for Max new tokens")
            tokens.fill(str(args.max_new_tokens))
            tokens.press("Enter")
            page.get_by_role("button", name="Send to both").click()
            page.get_by_text("Judge:", exact=False).first.wait_for()
            page.get_by_role("tab", name="Compare").scroll_into_view_if_needed()
            page.screenshot(path=str(out / "compare.png"))

            page.set_viewport_size({"width": 1400, "height": 1200})  # down to the last settings row
            page.get_by_role("tab", name="Train").click()
            page.get_by_text("Fit a refusal gate", exact=False).first.wait_for()
            page.wait_for_timeout(1000)
            page.screenshot(path=str(out / "train.png"))
            browser.close()
    finally:
        app.stop()
    print(f"wrote {out / 'compare.png'}, {out / 'label.png'} and {out / 'train.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
