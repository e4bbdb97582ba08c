"""Text generation for every tab: many chats at once with n responses each, or one chat streamed.

Batches are left-padded and sorted by length so little compute goes to padding; the KV cache is on; the seed
makes sampling reproducible. A chat is a list of ``{"role": ..., "content": ...}`` messages formatted with the
model's own chat template.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from alignment.settings import SettingsError, validate_range

Chat = list[dict[str, str]]

MAX_NEW_TOKENS_CAP = 2048


class GenerationCancelled(RuntimeError):
    """Raised when ``should_stop`` asked generation to stop; partial results are attached."""

    def __init__(self, done: int, total: int, partial: list[list[Generation]] | None = None):
        super().__init__(f"Generation cancelled after {done} of {total} chats.")
        self.done, self.total, self.partial = done, total, partial or []


@dataclass
class SamplingSettings:
    """Sampling settings shared by the playground, pair generation, red-teaming and compare."""

    max_new_tokens: int = field(default=256, metadata={"help": "Most tokens to generate per response."})
    do_sample: bool = field(default=True, metadata={"help": "Sample (True) or greedy decoding (False)."})
    temperature: float = field(default=0.7, metadata={"help": "Higher is more random; ignored when greedy."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling: keep the smallest set of tokens "
                                                     "whose probability sums to top_p."})
    top_k: int = field(default=50, metadata={"help": "Keep only the k most likely tokens (0 = off)."})
    repetition_penalty: float = field(default=1.1, metadata={"help": "Above 1 discourages repeating tokens."})
    seed: int | None = field(default=None, metadata={"help": "Random seed; the same seed gives the same text."})
    system_prompt: str | None = field(default=None, metadata={"help": "Optional system message put first."})

    def __post_init__(self) -> None:
        validate_range("max_new_tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS_CAP)
        validate_range("temperature", self.temperature, 0, 5, low_inclusive=False)
        validate_range("top_p", self.top_p, 0, 1, low_inclusive=False)
        validate_range("top_k", self.top_k, 0)
        validate_range("repetition_penalty", self.repetition_penalty, 0.5, 3)
        if self.seed is not None and not isinstance(self.seed, int):
            raise SettingsError(f"seed must be a whole number, got {self.seed!r}.")

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:
            # Explicit neutral values so a model's generation_config cannot switch sampling back on.
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs


@dataclass
class Generation:
    text: str
    tokens: int
    finished: bool  # True when the model stopped at EOS rather than at max_new_tokens
    routed: bool | None = None  # with a refusal gate: True = the adapter answered, False = the base weights
    prompt_state: Any = None  # with keep_prompt_states: every layer's hidden state at the prompt's last token


def _unwrap(loaded: Any) -> tuple[Any, Any, Any]:
    lock = getattr(loaded, "lock", None) or threading.RLock()
    return loaded.model, loaded.tokenizer, lock


def with_system(chat: Chat, system_prompt: str | None) -> Chat:
    if not system_prompt or (chat and chat[0].get("role") == "system"):
        return list(chat)
    return [{"role": "system", "content": system_prompt}, *chat]


def format_chat(tokenizer: Any, chat: Chat) -> str:
    return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = list(ids) if isinstance(ids, (list, tuple)) else ([ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _seed_everything(seed: int | None) -> None:
    if seed is None:
        return
    import torch

    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def generate(
    loaded: Any,
    chats: Sequence[Chat],
    settings: SamplingSettings | None = None,
    n: int = 1,
    batch_size: int = 16,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    keep_prompt_states: bool = False,
) -> list[list[Generation]]:
    """Generate ``n`` responses for each chat. Returns one list of ``n`` Generations per chat, in input order.

    ``batch_size`` counts chats per forward pass (each chat expands to ``n`` sequences). ``on_progress(done,
    total)`` is called after every batch; ``should_stop()`` is checked between batches. When ``loaded`` carries a
    refusal ``gate`` (alignment.gate; a registry side of a gated adapter does), the gate routes each chat: the
    adapter answers the ones it flags, the base weights the others, and each Generation says which (``routed``).
    ``keep_prompt_states`` keeps each prompt's hidden states at its last token, every layer, from the pass that
    reads the prompt anyway (``prompt_state``, float16 on the CPU: what a refusal gate is fitted on).
    """
    import torch

    settings = settings or SamplingSettings()
    if n < 1:
        raise SettingsError("n must be at least 1.")
    if not settings.do_sample and n > 1:
        raise SettingsError("Greedy decoding gives the same text every time: turn sampling on for n > 1.")
    model, tokenizer, lock = _unwrap(loaded)
    gate = getattr(loaded, "gate", None)
    texts = [format_chat(tokenizer, with_system(chat, settings.system_prompt)) for chat in chats]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    results: list[list[Generation] | None] = [None] * len(texts)
    eos_ids = set(_eos_ids(model, tokenizer))
    device = next(model.parameters()).device
    done = 0

    def run(indices: list[int], routed: bool | None) -> None:
        nonlocal done
        order = sorted(indices, key=lambda i: lengths[i])
        for start in range(0, len(order), max(1, batch_size)):
            if should_stop and should_stop():
                partial = [r for r in results if r is not None]
                raise GenerationCancelled(done, len(texts), partial)
            batch_idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in batch_idx], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            out = model.generate(**enc, **settings.generate_kwargs(), num_return_sequences=n,
                                 eos_token_id=list(eos_ids), pad_token_id=tokenizer.pad_token_id,
                                 output_hidden_states=keep_prompt_states, return_dict_in_generate=True)
            # The first step read the whole (left-padded) prompt: its last position is every prompt's last token.
            states = (torch.stack([layer[:, -1, :] for layer in out.hidden_states[0]], dim=1).half().cpu()
                      if keep_prompt_states else None)
            for row, seq in enumerate(out.sequences[:, enc["input_ids"].shape[1]:]):
                ids = seq.tolist()
                eos_at = next((pos for pos, tok in enumerate(ids) if tok in eos_ids), None)
                count = len(ids) if eos_at is None else eos_at + 1
                text = tokenizer.decode(ids[:count], skip_special_tokens=True).strip()
                chat_i = batch_idx[row // n]
                results[chat_i] = (results[chat_i] or []) + [
                    Generation(text=text, tokens=count, finished=eos_at is not None, routed=routed,
                               prompt_state=states[row] if states is not None else None)]
            done += len(batch_idx)
            if on_progress:
                on_progress(done, len(texts))

    with lock, torch.inference_mode():
        _seed_everything(settings.seed)
        if gate is None:
            run(list(range(len(texts))), None)
        else:
            from alignment.gate import base_weights

            flags = gate.route(model, tokenizer, texts, batch_size=max(1, batch_size))
            with base_weights(model):
                run([i for i, flagged in enumerate(flags) if not flagged], False)
            run([i for i, flagged in enumerate(flags) if flagged], True)
    return [r or [] for r in results]


def stream_chat(loaded: Any, chat: Chat, settings: SamplingSettings | None = None,
                hold: Callable[[], AbstractContextManager[Any]] | None = None) -> Iterator[str]:
    """Yield the growing response text for one chat as tokens arrive.

    The generating thread holds the model's lock (or enters ``hold()``, which yields an object with ``.model``,
    e.g. a registry side, and ``.gate`` when a refusal gate routes the chat) for the generation only. A reader
    that stops reading, such as a browser that went away mid-stream, therefore never keeps the model locked.
    """
    from transformers import TextIteratorStreamer

    settings = settings or SamplingSettings()
    model, tokenizer, lock = _unwrap(loaded)
    text = format_chat(tokenizer, with_system(chat, settings.system_prompt))
    device = next(model.parameters()).device
    enc = tokenizer([text], return_tensors="pt", add_special_tokens=False).to(device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=300)
    error: list[BaseException] = []

    def run() -> None:
        import torch

        from alignment.gate import base_weights

        try:
            with (hold() if hold else lock) as held, torch.inference_mode():
                generator = held.model if hold else model
                gate = getattr(held if hold else loaded, "gate", None)
                to_base = gate is not None and not gate.route(generator, tokenizer, [text])[0]
                _seed_everything(settings.seed)
                with base_weights(generator) if to_base else contextlib.nullcontext():
                    generator.generate(**enc, **settings.generate_kwargs(), streamer=streamer,
                                       eos_token_id=_eos_ids(model, tokenizer), pad_token_id=tokenizer.pad_token_id)
        except BaseException as exc:  # surfaced to the caller below
            error.append(exc)
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    answer = ""
    for piece in streamer:
        answer += piece
        yield answer.strip()
    thread.join()
    if error:
        raise error[0]


def tokens_per_second(generations: list[list[Generation]], seconds: float) -> float:
    total = sum(g.tokens for gens in generations for g in gens)
    return total / seconds if seconds > 0 else 0.0


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start
