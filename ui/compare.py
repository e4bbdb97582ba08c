"""Compare tab: one prompt (or a multi-turn chat) answered by two sides, shown side by side as they stream;
preset demo prompts and "run all presets" with the judge's verdicts; a blind mode where people vote; win rates
per pair of sides; export of the comparison as Markdown, HTML or JSONL.

A side is ``base`` or a LoRA adapter loaded onto the same weights (loading one, from a folder or a Hub id, is
admin-only). With one copy of the weights the sides take turns under the model lock: the left side streams to
its end, then the right, both with the same sampling settings and seed. A second, separately loaded model is
not offered: it would double the memory this app is built to save (see benchmarks/bench_compare_memory.py).

Blind mode shuffles which side is on the left and hides the names until the vote; votes go into the label
store as compare pairs (kind "vote"), which the Label tab never hands out, and can join the preference dataset
through the Dataset export's "include votes". Model text is shown only in Chatbots, Textboxes and Dataframes,
never as HTML. Every action is an API endpoint (``/compare_send``, ``/compare_vote_left`` ...).
"""

from __future__ import annotations

import random
import re
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from alignment.compare import (
    DEMO_KINDS,
    EXPORT_FORMATS,
    VOTE_ACTIONS,
    WIN_RATE_HEADERS,
    CompareError,
    ComparisonRow,
    DemoPrompt,
    check_sides,
    judge_rows,
    load_demo_prompts,
    record_vote,
    run_presets,
    store_win_rates,
    stream_sides,
    vote_pair,
    win_rate_table,
    with_seed,
    write_export,
)
from alignment.generation import MAX_NEW_TOKENS_CAP, SamplingSettings
from alignment.judge import load_judge
from alignment.models import ModelLoadError
from alignment.registry import BASE
from alignment.settings import SettingsError
from labeling.store import LabelError
from ui.context import AppContext, TabRefresh
from ui.identity import labeler_name, require_admin, signed_in_user, user_slot
from ui.safe_text import chat_from_display, display_chat

MAX_MESSAGE_CHARS = 4000
MAX_SESSION_ROWS = 500  # comparisons kept per browser session for export
PRESET_HEADERS = ["Kind", "Prompt", "Left side", "Left answer", "Left verdict", "Right side", "Right answer",
                  "Right verdict"]
INTENDED_CHOICES = ["unknown", "harmful", "benign"]
HIDDEN = "hidden until you vote"


def _sampling(max_new_tokens: float, do_sample: bool, temperature: float, top_p: float, seed: float | None,
              system_prompt: str) -> SamplingSettings:
    try:
        return SamplingSettings(max_new_tokens=int(max_new_tokens), do_sample=bool(do_sample),
                                temperature=float(temperature), top_p=float(top_p),
                                seed=int(seed) if seed not in (None, "") else None,
                                system_prompt=(system_prompt or "").strip() or None)
    except (SettingsError, TypeError, ValueError) as exc:
        raise gr.Error(str(exc)) from exc


def _verdict(verdict: dict[str, Any] | None) -> str:
    return f"{verdict['kind']} ({verdict['score']:.2f})" if verdict else ""


def _plain(text: str) -> str:
    """Text shown inside Markdown as typed: markdown punctuation and HTML are escaped."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|~<>&])", r"\\\1", str(text))


def _names(left: str, right: str) -> str:
    return f"**Left:** {_plain(left)} · **Right:** {_plain(right)}"


def _preset_table(rows: list[ComparisonRow]) -> pd.DataFrame:
    return pd.DataFrame([[r.kind, r.prompt_text, r.left, r.left_answer, _verdict(r.left_verdict), r.right,
                          r.right_answer, _verdict(r.right_verdict)] for r in rows], columns=PRESET_HEADERS)


def _win_rates(ctx: AppContext) -> pd.DataFrame:
    try:
        rates = store_win_rates(ctx.store)
    except LabelError as exc:
        raise gr.Error(str(exc)) from exc
    return pd.DataFrame(win_rate_table(rates), columns=WIN_RATE_HEADERS)


def _keep(rows: list[dict[str, Any]] | None, new: list[ComparisonRow]) -> list[dict[str, Any]]:
    return [*(rows or []), *(row.to_dict() for row in new)][-MAX_SESSION_ROWS:]


def build(ctx: AppContext, demo: gr.Blocks) -> TabRefresh:
    presets: list[DemoPrompt] = load_demo_prompts()
    by_title = {preset.title: preset for preset in presets}

    def preset_for(chat: list[dict[str, str]]) -> DemoPrompt | None:
        """The preset this chat is, if it is one unchanged (its category and kind then go with the vote)."""
        return next((p for p in presets if p.chat == chat), None)

    # -- side selection and adapters -----------------------------------------------------------------------

    def refresh_sides() -> tuple[Any, Any]:
        sides = ctx.registry.sides()
        return gr.update(choices=sides), gr.update(choices=sides)

    def load_adapter(path: str, name: str, request: gr.Request,
                     profile: gr.OAuthProfile | None = None) -> tuple[Any, Any, str]:
        require_admin(ctx, request, profile, "load adapters")
        path = (path or "").strip()
        if not path:
            raise gr.Error("Give the adapter's folder (a training run's adapter/ folder) or a Hub id.")
        try:
            loaded_name = ctx.registry.load_adapter(path, (name or "").strip() or None)
        except ModelLoadError as exc:
            raise gr.Error(str(exc)) from exc
        sides = ctx.registry.sides()
        gate = ctx.registry.gate(loaded_name)
        gated = f" {gate.explain(ctx.registry.loaded.quantized_4bit)}" if gate else ""
        return (gr.update(choices=sides), gr.update(choices=sides, value=loaded_name),
                f"Loaded adapter **{_plain(loaded_name)}**; it is now the right side.{gated}")

    # -- chatting with both sides --------------------------------------------------------------------------

    def pick_preset(title: str) -> tuple[Any, ...]:
        preset = by_title.get(title)
        if preset is None:
            raise gr.Error("Pick a preset from the list.")
        earlier = preset.chat[:-1]
        history = [dict(m) for m in earlier]
        return display_chat(history), display_chat(earlier), preset.chat[-1]["content"], preset.intended_label, None, \
            _names("", ""), f"Preset **{preset.id}** ({preset.kind}): press Send to compare."

    def send(message: str, left_history: list[dict[str, Any]], right_history: list[dict[str, Any]],
             left_choice: str, right_choice: str, blind: bool, intended: str, rows: list[dict[str, Any]] | None,
             current: dict[str, Any] | None, max_new_tokens: float, do_sample: bool, temperature: float,
             top_p: float, seed: float | None, system_prompt: str, request: gr.Request = None
             ) -> Iterator[tuple[Any, ...]]:
        message = (message or "").strip()
        if not message:
            raise gr.Error("Type a message or pick a preset first.")
        if len(message) > MAX_MESSAGE_CHARS:
            raise gr.Error(f"The message has {len(message)} characters; the limit is {MAX_MESSAGE_CHARS}. Shorten it.")
        try:
            check_sides(ctx.registry.sides(), left_choice, right_choice)
        except (CompareError, ModelLoadError) as exc:
            raise gr.Error(str(exc)) from exc
        settings = with_seed(_sampling(max_new_tokens, do_sample, temperature, top_p, seed, system_prompt))
        left_chat, right_chat = chat_from_display(left_history), chat_from_display(right_history)
        selection = [sorted((left_choice, right_choice)), bool(blind)]
        # A chat this tab answered carries its sides in the state; a preset's earlier turns start a new one.
        continuing = bool(current and current.get("last"))
        if continuing and current.get("selection") != selection:
            raise gr.Error("The sides or blind mode changed in the middle of this chat. Press 'Clear' to start "
                           "a new comparison.")
        if continuing:
            left, right = current["left"], current["right"]
        elif blind:
            left, right = random.SystemRandom().sample([left_choice, right_choice], 2)
        else:
            left, right = left_choice, right_choice
        preset = preset_for([*left_chat, {"role": "user", "content": message}]) if left_chat == right_chat else None
        left_chat.append({"role": "user", "content": message})
        right_chat.append({"role": "user", "content": message})
        state = {"selection": selection, "left": left, "right": right, "blind": bool(blind), "last": None}
        names = _names(HIDDEN, HIDDEN) if blind else _names(left, right)
        shown_left = [*left_chat, {"role": "assistant", "content": ""}]
        shown_right = [*right_chat, {"role": "assistant", "content": ""}]
        status = f"Answering with seed {settings.seed}: left first, then right (one copy of the weights)."
        yield display_chat(shown_left), display_chat(shown_right), "", state, names, status, rows
        try:
            # The per-user slot is held by the generating thread, so a closed browser cannot keep it.
            for left_text, right_text in stream_sides(ctx.registry, left, right, left_chat, right_chat, settings,
                                                      guard=lambda: user_slot(ctx, request, what="comparison")):
                shown_left[-1]["content"], shown_right[-1]["content"] = left_text, right_text
                yield display_chat(shown_left), display_chat(shown_right), "", state, names, status, rows
        except (ModelLoadError, SettingsError) as exc:
            raise gr.Error(str(exc)) from exc
        row = ComparisonRow(prompt=left_chat, left=left, right=right, left_answer=shown_left[-1]["content"],
                            right_answer=shown_right[-1]["content"], kind=preset.kind if preset else "typed",
                            category=preset.category if preset else "typed",
                            intended_label=intended if intended in ("harmful", "benign") else None,
                            seed=settings.seed, id=preset.id if preset else "")
        judge_rows([row], load_judge("rules"))
        state["last"] = {"row": row.to_dict(), "right_prompt": right_chat, "settings": settings.__dict__,
                         "vote_id": uuid.uuid4().hex, "voted": False}
        if blind:
            status = "Which answer is better? Vote below; the names and the judge's verdicts show after your vote."
        else:
            rows = _keep(rows, [row])
            status = (f"Judge: left ({_plain(left)}) {_verdict(row.left_verdict)} · right ({_plain(right)}) "
                      f"{_verdict(row.right_verdict)}. Seed {settings.seed}.")
        yield display_chat(shown_left), display_chat(shown_right), "", state, names, status, rows

    def clear() -> tuple[Any, ...]:
        return [], [], "", None, _names("", ""), ""

    # -- blind votes ---------------------------------------------------------------------------------------

    def vote(action: str, current: dict[str, Any] | None, typed_name: str, rows: list[dict[str, Any]] | None,
             request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple[Any, ...]:
        if not current or not current.get("last"):
            raise gr.Error("Nothing to vote on yet: turn on blind mode and send a prompt first.")
        if not current.get("blind"):
            raise gr.Error("Votes count only in blind mode, where you cannot see which side is which. Turn on "
                           "'Blind mode', press 'Clear' and send the prompt again.")
        last = current["last"]
        if last.get("voted"):
            raise gr.Error("You already voted on these answers. Send another message or prompt to vote again.")
        voter = labeler_name(request, profile, typed_name)
        row = ComparisonRow.from_dict(last["row"])
        try:
            pair, left = vote_pair(row.prompt, row.left, row.left_answer, row.right, row.right_answer,
                                   SamplingSettings(**last["settings"]), category=row.category,
                                   intended_label=row.intended_label, right_prompt=last["right_prompt"])
            record_vote(ctx.store, pair, left, action, voter, label_id=last["vote_id"])
        except (CompareError, LabelError, ValueError) as exc:
            raise gr.Error(str(exc)) from exc
        current = {**current, "last": {**last, "voted": True}}
        said = {"left": f"the left side ({_plain(row.left)})", "right": f"the right side ({_plain(row.right)})",
                "tie": "a tie", "both_bad": "both bad"}[action]
        status = (f"Vote saved for {_plain(voter)}: {said}. Judge: left {_verdict(row.left_verdict)} · right "
                  f"{_verdict(row.right_verdict)}.")
        return current, _names(row.left, row.right), status, _keep(rows, [row]), _win_rates(ctx)

    # -- presets, export -------------------------------------------------------------------------------------

    def run_all(kinds: list[str], left_choice: str, right_choice: str, rows: list[dict[str, Any]] | None,
                max_new_tokens: float, do_sample: bool, temperature: float, top_p: float, seed: float | None,
                system_prompt: str, request: gr.Request = None,
                progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008 - gradio's injection idiom
        chosen = [p for p in presets if p.kind in (kinds or [])]
        if not chosen:
            raise gr.Error(f"Tick at least one kind of preset ({', '.join(DEMO_KINDS)}).")
        settings = _sampling(max_new_tokens, do_sample, temperature, top_p, seed, system_prompt)

        def on_progress(done: int, total: int) -> None:
            progress(done / total, desc=f"{done} of {total} answers")

        try:
            with user_slot(ctx, request, what="comparison"):
                result = run_presets(ctx.registry, chosen, left_choice, right_choice, settings, load_judge("rules"),
                                     on_progress=on_progress)
        except (CompareError, ModelLoadError, SettingsError) as exc:
            raise gr.Error(str(exc)) from exc
        return _preset_table(result), _keep(rows, result), f"{len(result)} presets answered by both sides."

    def export(fmt: str, rows: list[dict[str, Any]] | None) -> str:
        if not rows:
            raise gr.Error("Nothing to export yet: compare a prompt or run the presets first.")
        suffix = EXPORT_FORMATS.get(fmt)
        if suffix is None:
            raise gr.Error(f"Pick one of {', '.join(EXPORT_FORMATS)}.")
        folder = Path(tempfile.mkdtemp(prefix="align-compare-"))
        try:
            path = write_export([ComparisonRow.from_dict(r) for r in rows], folder / f"comparison{suffix}", fmt)
        except (CompareError, TypeError) as exc:
            raise gr.Error(str(exc)) from exc
        return str(path)

    # -- layout ------------------------------------------------------------------------------------------------

    sides = ctx.registry.sides()
    state = gr.State(None)
    rows_state = gr.State([])
    with gr.Row():
        # allow_custom_value: adapters loaded after start are not in the choices the server built the page with;
        # the handlers check the side is loaded.
        left_side = gr.Dropdown(choices=sides, value=BASE, label="Left side", scale=2, allow_custom_value=True)
        right_side = gr.Dropdown(choices=sides, value=sides[-1] if len(sides) > 1 else None, label="Right side",
                                 scale=2, info="Load an adapter below (admins) to have a second side.",
                                 allow_custom_value=True)
        blind = gr.Checkbox(value=False, label="Blind mode", scale=1,
                            info="Shuffle the sides and hide the names until you vote.")
    preset = gr.Dropdown(choices=list(by_title), value=None, label="Preset demo prompt",
                         info="Harmful, jailbreak, benign and borderline requests written for the demo.")
    names = gr.Markdown(_names("", ""))
    with gr.Row(equal_height=True):
        left_chat = gr.Chatbot(label="Left", height=420, buttons=["copy"])
        right_chat = gr.Chatbot(label="Right", height=420, buttons=["copy"])
    message = gr.Textbox(label="Message (sent to both sides)", lines=2, max_length=MAX_MESSAGE_CHARS,
                         placeholder="Ask something, or pick a preset above")
    with gr.Row():
        send_btn = gr.Button("Send to both", variant="primary")
        clear_btn = gr.Button("Clear")
        intended = gr.Radio(INTENDED_CHOICES, value="unknown", label="This request is",
                            info="Stored with blind votes, so a harmful-prompt vote can join the preference data.")
    status = gr.Markdown()
    with gr.Accordion("Blind vote", open=True):
        voter = gr.Textbox(label="Your name", max_length=64, placeholder="Votes are credited to this name")
        with gr.Row():
            vote_buttons = {
                "left": gr.Button("Left is better", variant="primary"),
                "right": gr.Button("Right is better", variant="primary"),
                "tie": gr.Button("Tie"),
                "both_bad": gr.Button("Both bad", variant="stop"),
            }
        rates = gr.Dataframe(headers=WIN_RATE_HEADERS, value=[], label="Blind-vote win rates (95% Wilson interval; "
                             "ties and 'both bad' counted separately)", interactive=False, wrap=True)
        rates_btn = gr.Button("Refresh win rates", size="sm")
    with gr.Accordion("Run all presets", open=False):
        kinds = gr.CheckboxGroup(list(DEMO_KINDS), value=list(DEMO_KINDS), label="Kinds")
        run_btn = gr.Button("Run all presets on both sides")
        preset_status = gr.Markdown()
        preset_table = gr.Dataframe(headers=PRESET_HEADERS, value=[], interactive=False, wrap=True, max_height=500)
    with gr.Accordion("Export this session's comparisons", open=False):
        fmt = gr.Radio(list(EXPORT_FORMATS), value="markdown", label="Format")
        export_btn = gr.Button("Export")
        export_file = gr.File(label="Download", interactive=False)
    with gr.Accordion("Sampling settings (same for both sides)", open=False):
        help_ = {f: SamplingSettings.__dataclass_fields__[f].metadata["help"] for f in
                 ("max_new_tokens", "do_sample", "temperature", "top_p", "seed", "system_prompt")}
        max_new_tokens = gr.Slider(8, MAX_NEW_TOKENS_CAP, value=128, step=8, label="Max new tokens",
                                   info=help_["max_new_tokens"])
        do_sample = gr.Checkbox(value=True, label="Sample", info=help_["do_sample"])
        temperature = gr.Slider(0.05, 2.0, value=0.7, step=0.05, label="Temperature", info=help_["temperature"])
        top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p", info=help_["top_p"])
        seed = gr.Number(value=None, precision=0, label="Seed (blank = one random seed for both sides)",
                         info=help_["seed"])
        system_prompt = gr.Textbox(label="System prompt", lines=2, info=help_["system_prompt"])
    with gr.Accordion("Load an adapter (admins)", open=False):
        adapter_path = gr.Textbox(label="Adapter folder or Hub id", placeholder="runs/my-run/adapter")
        adapter_name = gr.Textbox(label="Name (optional)", placeholder="defaults to the run's folder name")
        load_btn = gr.Button("Load adapter")
        refresh_btn = gr.Button("Refresh sides", size="sm")

    sampling = [max_new_tokens, do_sample, temperature, top_p, seed, system_prompt]
    chat_outputs = [left_chat, right_chat, message, state, names, status]

    load_btn.click(load_adapter, [adapter_path, adapter_name], [left_side, right_side, status],
                   api_name="compare_load_adapter")
    refresh_btn.click(refresh_sides, None, [left_side, right_side], api_name="compare_sides")
    demo.load(refresh_sides, None, [left_side, right_side], api_name=False)
    preset.input(pick_preset, [preset], [left_chat, right_chat, message, intended, state, names, status],
                 api_name="compare_preset")
    send_inputs = [message, left_chat, right_chat, left_side, right_side, blind, intended, rows_state, state,
                   *sampling]
    send_outputs = [*chat_outputs, rows_state]
    send_btn.click(send, send_inputs, send_outputs, api_name="compare_send")
    message.submit(send, send_inputs, send_outputs, api_name=False)
    clear_btn.click(clear, None, chat_outputs, api_name="compare_clear")
    for component in (left_side, right_side, blind):
        component.input(clear, None, chat_outputs, api_name=False)

    def vote_handler(action: str):
        def handler(current: dict[str, Any] | None, typed_name: str, rows: list[dict[str, Any]] | None,
                    request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple[Any, ...]:
            return vote(action, current, typed_name, rows, request, profile)
        return handler

    for action in VOTE_ACTIONS:
        vote_buttons[action].click(vote_handler(action), [state, voter, rows_state],
                                   [state, names, status, rows_state, rates], api_name=f"compare_vote_{action}")
    rates_btn.click(lambda: _win_rates(ctx), None, rates, api_name="compare_win_rates")
    run_btn.click(run_all, [kinds, left_side, right_side, rows_state, *sampling],
                  [preset_table, rows_state, preset_status], api_name="compare_run_presets")
    export_btn.click(export, [fmt, rows_state], export_file, api_name="compare_export")

    def fill_voter(request: gr.Request, profile: gr.OAuthProfile | None = None) -> Any:
        user = signed_in_user(request, profile)
        return gr.update(value=user, interactive=False) if user else gr.update()

    demo.load(fill_voter, None, voter, api_name=False)
    return refresh_sides, [left_side, right_side]
