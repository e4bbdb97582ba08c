"""Playground tab: chat with the loaded model (or a loaded adapter) with streaming and sampling settings,
and see the model's facts (name, parameters, device, dtype, memory in use, adapters and their refusal gates).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import gradio as gr

from alignment.generation import MAX_NEW_TOKENS_CAP, SamplingSettings
from alignment.models import ModelLoadError
from alignment.registry import BASE
from alignment.settings import SettingsError
from ui.context import AppContext, TabRefresh
from ui.identity import user_slot
from ui.safe_text import display_chat

MAX_MESSAGE_CHARS = 4000


def _adapter_label(ctx: AppContext, name: str) -> str:
    gate = ctx.registry.gate(name)
    return f"{name} (refusal gate, layer {gate.layer})" if gate is not None else name


def facts_markdown(ctx: AppContext) -> str:
    import psutil

    try:
        facts = ctx.registry.loaded.facts()
    except (ModelLoadError, SettingsError) as exc:
        return f"**Model not loaded.** {exc}"
    rss = psutil.Process(os.getpid()).memory_info().rss / 2**20
    adapters = ", ".join(_adapter_label(ctx, name) for name in ctx.registry.adapters()) or "none"
    return (
        f"| | |\n|---|---|\n| Model | {facts['name']} |\n| Source | {facts['source']} |\n"
        f"| Parameters | {facts['parameters'] / 1e6:.1f} M |\n| Device | {facts['device']} |\n"
        f"| Dtype | {facts['dtype']}{' (4-bit NF4)' if facts['4-bit'] else ''} |\n"
        f"| Weights in memory | {facts['memory_mb']:.0f} MB |\n| Process memory (RSS) | {rss:.0f} MB |\n"
        f"| Adapters loaded | {adapters} |"
    )


def build(ctx: AppContext, demo: gr.Blocks) -> TabRefresh:
    def respond(message: str, chat: list[dict[str, str]] | None, side: str, max_new_tokens: float,
                do_sample: bool, temperature: float, top_p: float, seed: float | None, system_prompt: str,
                request: gr.Request = None) -> Iterator[tuple[list[dict[str, str]], list[dict[str, str]], str]]:
        message = (message or "").strip()
        if not message:
            raise gr.Error("Type a message first.")
        if len(message) > MAX_MESSAGE_CHARS:
            raise gr.Error(f"The message has {len(message)} characters; the limit is {MAX_MESSAGE_CHARS}. "
                           "Shorten it.")
        try:
            settings = SamplingSettings(
                max_new_tokens=int(max_new_tokens), do_sample=bool(do_sample), temperature=float(temperature),
                top_p=float(top_p), seed=int(seed) if seed not in (None, "") else None,
                system_prompt=(system_prompt or "").strip() or None,
            )
        except SettingsError as exc:
            raise gr.Error(str(exc)) from exc
        # The raw chat lives in per-session state; the Chatbot only ever gets the escaped copy.
        chat = [*(chat or []), {"role": "user", "content": message}]
        answer = {"role": "assistant", "content": ""}
        try:
            for text in ctx.registry.stream(side or BASE, chat, settings, guard=lambda: user_slot(ctx, request)):
                answer["content"] = text
                yield display_chat([*chat, answer]), chat, ""
        except ModelLoadError as exc:
            raise gr.Error(str(exc)) from exc
        chat = [*chat, answer]
        yield display_chat(chat), chat, ""

    raw_chat = gr.State([])
    with gr.Row():
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(label="Chat", height=460, buttons=["copy"])
            message = gr.Textbox(label="Message", placeholder="Ask something, e.g. 'Create a task to review the "
                                 "Q3 budget on Friday'", lines=2, max_length=MAX_MESSAGE_CHARS)
            with gr.Row():
                send = gr.Button("Send", variant="primary")
                clear = gr.Button("Clear chat")
        with gr.Column(scale=2):
            side = gr.Dropdown(choices=ctx.registry.sides(), value=BASE, label="Model side",
                               info="'base' is the model as loaded; trained adapters appear here.")
            with gr.Accordion("Sampling settings", open=False):
                help_ = {f: SamplingSettings.__dataclass_fields__[f].metadata["help"] for f in
                         ("max_new_tokens", "do_sample", "temperature", "top_p", "seed", "system_prompt")}
                max_new_tokens = gr.Slider(8, MAX_NEW_TOKENS_CAP, value=256, step=8, label="Max new tokens",
                                           info=help_["max_new_tokens"])
                do_sample = gr.Checkbox(value=True, label="Sample", info=help_["do_sample"])
                temperature = gr.Slider(0.05, 2.0, value=0.7, step=0.05, label="Temperature",
                                        info=help_["temperature"])
                top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p", info=help_["top_p"])
                seed = gr.Number(value=None, precision=0, label="Seed (blank = random)", info=help_["seed"])
                system_prompt = gr.Textbox(label="System prompt", lines=2, info=help_["system_prompt"])
            facts = gr.Markdown(label="Model facts")
            refresh = gr.Button("Refresh model facts", size="sm")

    inputs = [message, raw_chat, side, max_new_tokens, do_sample, temperature, top_p, seed, system_prompt]
    outputs = [chatbot, raw_chat, message]
    send.click(respond, inputs, outputs, api_name="chat")
    message.submit(respond, inputs, outputs, api_name=False)
    clear.click(lambda: ([], [], ""), None, outputs, api_name="clear_chat")

    def refresh_facts() -> tuple[str, Any]:
        return facts_markdown(ctx), gr.update(choices=ctx.registry.sides())

    refresh.click(refresh_facts, None, [facts, side], api_name="model_facts")
    demo.load(refresh_facts, None, [facts, side], api_name=False)
    return refresh_facts, [facts, side]
