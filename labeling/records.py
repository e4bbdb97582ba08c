"""The records that flow through labeling: prompts, response pairs and labels.

Plain dataclasses shared by prompt sources, pair generation, the label store, export and Hub sync, so every
part agrees on one shape. Choices are always stated about the stored responses (``a``/``b``), never about the
side they were shown on; ``left`` records which stored response the labeler saw on the left.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Message = dict[str, str]
Choice = Literal["a", "b", "tie", "both_bad"]
CHOICES: tuple[str, ...] = ("a", "b", "tie", "both_bad")
INTENDED_LABELS: tuple[str, ...] = ("benign", "harmful")


def prompt_key(messages: list[Message]) -> str:
    """Stable id of a prompt's content, used to skip prompts already paired and to find duplicates."""
    canonical = json.dumps([[m.get("role", ""), m.get("content", "").strip()] for m in messages], ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def as_messages(prompt: str | list[Message]) -> list[Message]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(m) for m in prompt]


def prompt_text(messages: list[Message]) -> str:
    """The last user turn, for tables and keyword search."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return message.get("content", "")
    return messages[-1].get("content", "") if messages else ""


@dataclass
class PromptRecord:
    messages: list[Message]
    category: str = "uncategorised"
    intended_label: str | None = None  # "benign" | "harmful" | None (unknown)
    source: str = "typed"
    reference: str | None = None  # an optional written answer (the "model vs written answer" strategy)

    @property
    def key(self) -> str:
        return prompt_key(self.messages)

    @property
    def text(self) -> str:
        return prompt_text(self.messages)


@dataclass
class PairRecord:
    prompt: list[Message]
    response_a: str
    response_b: str
    strategy: str
    model_a: str
    model_b: str
    category: str = "uncategorised"
    intended_label: str | None = None
    source: str = "typed"
    settings: dict[str, Any] = field(default_factory=dict)  # sampling settings of each side
    seed: int | None = None
    created_at: float = field(default_factory=time.time)
    pair_id: str = ""

    def __post_init__(self) -> None:
        if not self.pair_id:
            # Deterministic: regenerating the same prompt with the same strategy/model/seed is the same pair.
            basis = json.dumps([prompt_key(self.prompt), self.strategy, self.model_a, self.model_b, self.seed,
                                self.response_a, self.response_b], ensure_ascii=False)
            self.pair_id = hashlib.sha256(basis.encode("utf-8")).hexdigest()[:16]

    @property
    def prompt_key(self) -> str:
        return prompt_key(self.prompt)

    @property
    def prompt_text(self) -> str:
        return prompt_text(self.prompt)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LabelRecord:
    pair_id: str
    labeler: str
    choice: str  # one of CHOICES, about stored responses a/b
    left: str  # "a" or "b": which stored response was shown on the left
    rewrite: str | None = None  # replaces the better answer's text as the chosen response
    comment: str | None = None
    kind: str = "label"  # "label" (Label tab) or "vote" (blind compare)
    retracts: str | None = None  # label_id this record retracts (undo); choice is then ignored
    created_at: float = field(default_factory=time.time)
    label_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        if self.retracts is None and self.choice not in CHOICES:
            raise ValueError(f"choice {self.choice!r} is not one of {', '.join(CHOICES)}.")
        if self.left not in ("a", "b"):
            raise ValueError(f"left must be 'a' or 'b', got {self.left!r}.")
        if not self.labeler or not self.labeler.strip():
            raise ValueError("labeler name is empty.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
