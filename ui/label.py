"""Label tab: a prompt and two responses (sides shuffled per labeler and recorded), A / B / tie / both bad,
an optional rewrite and comment, skip, undo, keyboard shortcuts, guidelines, and progress.

Everything shown is the stored text in plain text boxes, so model output and prompts never render as HTML.
Each button is one parametrised handler; each is also an API endpoint (``/label_left`` ...), which the
concurrency tests drive through gradio_client.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import gradio as gr

from labeling.records import LabelRecord
from labeling.store import LabelError
from ui.context import AppContext
from ui.identity import labeler_name, require_admin, signed_in_user

GUIDELINES_FILE = Path(__file__).resolve().parents[1] / "docs" / "GUIDELINES.md"
GUIDELINES_KEY = "guidelines"
MAX_REWRITE_CHARS = 8000
# Button action -> choice about the stored responses, given which stored response is on the left.
ACTIONS = ("left", "right", "tie", "both_bad", "skip", "undo")


def default_guidelines() -> str:
    return GUIDELINES_FILE.read_text(encoding="utf-8") if GUIDELINES_FILE.is_file() else ""


def guidelines(ctx: AppContext) -> str:
    return ctx.store.get_setting(GUIDELINES_KEY) or default_guidelines()


def format_prompt(messages: list[dict[str, str]]) -> str:
    if len(messages) == 1:
        return messages[0].get("content", "")
    return "\n\n".join(f"[{m.get('role', '?')}]\n{m.get('content', '')}" for m in messages)


def choice_for(action: str, left: str) -> str:
    right = "b" if left == "a" else "a"
    return {"left": left, "right": right, "tie": "tie", "both_bad": "both_bad"}[action]


def progress_text(ctx: AppContext, labeler: str | None) -> str:
    p = ctx.store.progress(labeler)
    mine = f"**You:** {p['mine']} labels · " if labeler else ""
    return (f"{mine}**Everyone:** {p['everyone']} labels by {p['labelers']} labelers · "
            f"**Left to label:** {p['remaining']} of {p['pairs']} pairs (each pair wants {p['k']} "
            f"label{'s' if p['k'] != 1 else ''})")


def _view(ctx: AppContext, labeler: str, status: str = "") -> tuple[Any, ...]:
    """Next pair for this labeler as (state, prompt, left, right, rewrite, comment, progress, status)."""
    try:
        assignment = ctx.store.next_pair(labeler)
    except LabelError as exc:
        raise gr.Error(str(exc)) from exc
    progress = progress_text(ctx, labeler)
    if assignment is None:
        state = {"labeler": labeler, "pair_id": None}
        done = "Nothing left for you to label right now. Thank you! New pairs appear here when an admin " \
               "generates them."
        return state, "", "", "", "", "", progress, f"{status} {done}".strip()
    pair = assignment.pair
    left_text = pair.response_a if assignment.left == "a" else pair.response_b
    right_text = pair.response_b if assignment.left == "a" else pair.response_a
    # One label id per shown pair: a double click or a retried request stores the label once.
    state = {"labeler": labeler, "pair_id": pair.pair_id, "left": assignment.left, "label_id": uuid.uuid4().hex}
    return state, format_prompt(pair.prompt), left_text, right_text, "", "", progress, status


def build(ctx: AppContext, demo: gr.Blocks) -> None:
    state = gr.State(None)
    with gr.Row():
        name = gr.Textbox(label="Your name", placeholder="Type your name to start labeling", max_length=64,
                          scale=3, info="Labels are credited to this name. Signed-in users get their account name.")
        start = gr.Button("Start labeling", variant="primary", scale=1)
    progress = gr.Markdown()
    status = gr.Markdown()
    prompt = gr.Textbox(label="Request", interactive=False, lines=3, max_lines=12)
    with gr.Row(equal_height=True):
        left = gr.Textbox(label="Answer A (left)", interactive=False, lines=10, max_lines=30, buttons=["copy"])
        right = gr.Textbox(label="Answer B (right)", interactive=False, lines=10, max_lines=30, buttons=["copy"])
    with gr.Row():
        left_btn = gr.Button("A is better  [1]", elem_id="label-left", variant="primary")
        right_btn = gr.Button("B is better  [2]", elem_id="label-right", variant="primary")
        tie_btn = gr.Button("Tie  [3]", elem_id="label-tie")
        bad_btn = gr.Button("Both bad  [4]", elem_id="label-both-bad", variant="stop")
    with gr.Row():
        skip_btn = gr.Button("Skip  [s]", elem_id="label-skip", size="sm")
        undo_btn = gr.Button("Undo my last label  [u]", elem_id="label-undo", size="sm")
    with gr.Accordion("Rewrite and comment (optional)", open=False):
        rewrite = gr.Textbox(label="Rewrite the better answer", lines=4, max_length=MAX_REWRITE_CHARS,
                             info="If filled, this text becomes the chosen answer in the dataset.")
        comment = gr.Textbox(label="Comment", lines=2, max_length=2000)
    with gr.Accordion("Guidelines", open=False):
        guide = gr.Markdown(sanitize_html=True)
        with gr.Group(visible=True):
            guide_edit = gr.Textbox(label="Edit guidelines (admins)", lines=10)
            guide_save = gr.Button("Save guidelines", size="sm")

    view_outputs = [state, prompt, left, right, rewrite, comment, progress, status]

    def on_load(request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple[Any, ...]:
        user = signed_in_user(request, profile)
        text = guidelines(ctx)
        name_update = gr.update(value=user, interactive=False) if user else gr.update()
        return name_update, text, text, progress_text(ctx, user)

    def start_labeling(typed: str, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple[Any, ...]:
        return _view(ctx, labeler_name(request, profile, typed))

    def act(action: str, current: dict | None, rewrite_text: str, comment_text: str, request: gr.Request,
            profile: gr.OAuthProfile | None = None) -> tuple[Any, ...]:
        if not current or not current.get("labeler"):
            raise gr.Error("Type your name and press 'Start labeling' first.")
        labeler = current["labeler"]
        signed = signed_in_user(request, profile)
        if signed and signed != labeler:
            raise gr.Error("You are signed in under another name; reload the page.")
        if action == "undo":
            try:
                undone = ctx.store.undo_last(labeler)
            except LabelError as exc:
                raise gr.Error(str(exc)) from exc
            return _view(ctx, labeler, "Your last label was taken back; the pair is shown again."
                         if undone else "You have no label to undo.")
        if not current.get("pair_id"):
            return _view(ctx, labeler)
        if action == "skip":
            ctx.store.release(labeler, current["pair_id"])
            return _view(ctx, labeler, "Skipped.")
        rewrite_text = (rewrite_text or "").strip() or None
        if rewrite_text and len(rewrite_text) > MAX_REWRITE_CHARS:
            raise gr.Error(f"The rewrite is longer than {MAX_REWRITE_CHARS} characters; shorten it.")
        try:
            label = LabelRecord(pair_id=current["pair_id"], labeler=labeler,
                                choice=choice_for(action, current["left"]), left=current["left"],
                                rewrite=rewrite_text, comment=(comment_text or "").strip() or None,
                                label_id=current["label_id"])
            stored = ctx.store.record_label(label)
        except (LabelError, ValueError) as exc:
            raise gr.Error(str(exc)) from exc
        return _view(ctx, labeler, "Saved." if stored else "Already saved.")

    def save_guidelines(text: str, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple[str, str]:
        require_admin(ctx, request, profile, "edit the guidelines")
        text = (text or "").strip()
        if not text:
            raise gr.Error("The guidelines are empty; write something or keep the old text.")
        ctx.store.set_setting(GUIDELINES_KEY, text)
        gr.Info("Guidelines saved.")
        return text, text

    demo.load(on_load, None, [name, guide, guide_edit, progress], api_name=False)
    start.click(start_labeling, [name], view_outputs, api_name="label_start")
    name.submit(start_labeling, [name], view_outputs, api_name=False)
    buttons = {"left": left_btn, "right": right_btn, "tie": tie_btn, "both_bad": bad_btn, "skip": skip_btn,
               "undo": undo_btn}
    def handler_for(action: str):
        def handler(current: dict | None, rewrite_text: str, comment_text: str, request: gr.Request,
                    profile: gr.OAuthProfile | None = None) -> tuple[Any, ...]:
            return act(action, current, rewrite_text, comment_text, request, profile)
        return handler

    for action, button in buttons.items():
        # concurrency_limit=None: these are short SQLite writes; queuing them behind generation would stall labelers.
        button.click(handler_for(action), [state, rewrite, comment], view_outputs, api_name=f"label_{action}",
                     concurrency_limit=None)
    guide_save.click(save_guidelines, [guide_edit], [guide, guide_edit], api_name="save_guidelines")
