"""Showing untrusted text (prompts, model answers) in a Chatbot as the text it is.

The Chatbot renders markdown and *sanitised* HTML, so ``<b>`` would turn bold and tags would vanish. Escaping
``& < >`` keeps markdown working while every tag shows literally and nothing can run. ``chat_from_display``
undoes it exactly for a chat that comes back from a Chatbot.
"""

from __future__ import annotations

import html
from typing import Any


def display_chat(chat: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": html.escape(m["content"], quote=False)} for m in chat]


def chat_from_display(history: list[dict[str, Any]] | None) -> list[dict[str, str]]:
    chat = []
    for message in history or []:
        content = message.get("content")
        if isinstance(content, list):  # gradio may give content parts
            content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
        chat.append({"role": str(message.get("role")), "content": html.unescape(str(content or ""))})
    return chat
