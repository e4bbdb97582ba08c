"""Pair generation: two responses per prompt for people to compare, written to the label store batch by batch.

Strategies (see :data:`STRATEGIES`):

- ``two_samples``: the same model sampled twice with different settings (default temperature 0.7 vs 1.1);
  equal settings generate both responses in one call with ``n=2``.
- ``system_prompt``: with and without a safety system prompt.
- ``adapter``: the base model (adapter disabled) vs a trained LoRA adapter, on one peft model.
- ``written``: the model's answer vs the prompt's written reference answer.

The job batches many prompts per ``generate`` call, reports progress, stops between batches when asked (pairs
already made are kept), and skips prompts the store already paired with the same strategy and model, so an
interrupted job resumes where it stopped.

Command line::

    python -m labeling.pairs --data-dir data --model bundled --set benign --set harmful --limit 20 \\
        --strategy system_prompt
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Protocol

from alignment.generation import Generation, SamplingSettings, generate
from alignment.settings import SettingsError, from_dict, parse_overrides, validate_range
from labeling.records import Message, PairRecord, PromptRecord

DEFAULT_SAFETY_PROMPT = (
    "You are a helpful assistant for a task-management app. Help fully with legitimate requests. If a request "
    "could hurt people (violence, self-harm, stalking or spying, harassment, hate, fraud, malware or other "
    "illegal activity), acknowledge it, say briefly and clearly why you can't help, and offer a safe, useful "
    "alternative. Do not lecture."
)
WRITTEN_MODEL_NAME = "written reference"


class PairJobError(RuntimeError):
    """The job cannot run as set up (wrong model for the strategy, no usable prompts); says what to change."""


class PairStore(Protocol):
    def add_pairs(self, pairs: list[PairRecord]) -> int: ...

    def paired_prompt_keys(self, strategy: str, model: str) -> set[str]: ...


@dataclass
class SideOutput:
    text: str
    tokens: int = 0


# ---------------------------------------------------------------- strategies


@dataclass
class PairStrategy:
    """Settings shared by every strategy. Subclasses add their own fields and say how the two sides are made."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    max_new_tokens: int = field(default=256, metadata={"help": "Most tokens to generate per response."})
    do_sample: bool = field(default=True, metadata={"help": "Sample (True) or greedy decoding (False)."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling: keep the smallest set of tokens whose "
                                                        "probability sums to top_p."})
    top_k: int = field(default=50, metadata={"help": "Keep only the k most likely tokens (0 = off)."})
    repetition_penalty: float = field(default=1.1, metadata={"help": "Above 1 discourages repeating tokens."})
    seed: int | None = field(default=None, metadata={"help": "Random seed of the job; empty picks one and records "
                                                             "it on every pair."})

    def __post_init__(self) -> None:
        validate_range("max_new_tokens", self.max_new_tokens, 1, 2048)
        validate_range("top_p", self.top_p, 0, 1, low_inclusive=False)
        validate_range("top_k", self.top_k, 0)
        validate_range("repetition_penalty", self.repetition_penalty, 0.5, 3)
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise SettingsError(f"seed must be a whole number or empty, got {self.seed!r}.")

    def sampling(self, temperature: float, seed: int) -> SamplingSettings:
        return SamplingSettings(max_new_tokens=self.max_new_tokens, do_sample=self.do_sample,
                                temperature=temperature, top_p=self.top_p, top_k=self.top_k,
                                repetition_penalty=self.repetition_penalty, seed=seed)

    def settings_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # -- what each strategy defines --------------------------------------------------------------------

    def check(self, loaded: Any) -> None:
        """Raise PairJobError when ``loaded`` cannot serve this strategy."""

    def model_names(self, loaded: Any) -> tuple[str, str]:
        name = model_name(loaded)
        return name, name

    def resume_model(self, loaded: Any) -> str:
        """The model name that identifies this job's pairs in the store (for resuming)."""
        return self.model_names(loaded)[0]

    def unusable(self, prompt: PromptRecord) -> str | None:
        """Why this prompt cannot be paired with this strategy, or None."""
        return None

    def side_settings(self, seed: int) -> dict[str, dict[str, Any]]:
        raise NotImplementedError

    def run_batch(self, loaded: Any, prompts: Sequence[PromptRecord], seed: int,
                  batch_size: int) -> list[tuple[SideOutput, SideOutput]]:
        raise NotImplementedError


def _side(generation: Generation) -> SideOutput:
    return SideOutput(generation.text, generation.tokens)


def _chats(prompts: Sequence[PromptRecord]) -> list[list[Message]]:
    return [[dict(m) for m in p.messages] for p in prompts]


@dataclass
class TwoSamples(PairStrategy):
    name: ClassVar[str] = "two_samples"
    description: ClassVar[str] = "Same model, two sampling settings (e.g. temperature 0.7 vs 1.1)."

    temperature_a: float = field(default=0.7, metadata={"help": "Temperature of response A."})
    temperature_b: float = field(default=1.1, metadata={"help": "Temperature of response B (equal to A: both come "
                                                               "from one call with n=2)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_range("temperature_a", self.temperature_a, 0, 5, low_inclusive=False)
        validate_range("temperature_b", self.temperature_b, 0, 5, low_inclusive=False)
        if not self.do_sample:
            raise SettingsError("two_samples needs do_sample on: greedy decoding gives the same text twice.")

    def side_settings(self, seed: int) -> dict[str, dict[str, Any]]:
        return {"a": dataclasses.asdict(self.sampling(self.temperature_a, seed)),
                "b": dataclasses.asdict(self.sampling(self.temperature_b, seed))}

    def run_batch(self, loaded, prompts, seed, batch_size):
        chats = _chats(prompts)
        if self.temperature_a == self.temperature_b:
            # One call, n=2: both responses share the prompt's prefill and KV cache.
            both = generate(loaded, chats, self.sampling(self.temperature_a, seed), n=2, batch_size=batch_size)
            return [(_side(g[0]), _side(g[1])) for g in both]
        side_a = generate(loaded, chats, self.sampling(self.temperature_a, seed), batch_size=batch_size)
        side_b = generate(loaded, chats, self.sampling(self.temperature_b, seed), batch_size=batch_size)
        return [(_side(a[0]), _side(b[0])) for a, b in zip(side_a, side_b, strict=True)]


def add_system_prompt(messages: list[Message], system_prompt: str) -> list[Message]:
    """Put the safety prompt first; a prompt's own system message is kept after it in the same message."""
    messages = [dict(m) for m in messages]
    if messages and messages[0].get("role") == "system":
        messages[0]["content"] = f"{system_prompt}\n\n{messages[0]['content']}"
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


@dataclass
class SystemPrompt(PairStrategy):
    name: ClassVar[str] = "system_prompt"
    description: ClassVar[str] = "Same model with (A) and without (B) a safety system prompt."

    temperature: float = field(default=0.7, metadata={"help": "Temperature of both responses."})
    system_prompt: str = field(default=DEFAULT_SAFETY_PROMPT,
                               metadata={"help": "The safety system prompt used for response A."})

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_range("temperature", self.temperature, 0, 5, low_inclusive=False)
        if not self.system_prompt or not self.system_prompt.strip():
            raise SettingsError("system_prompt is empty: write the safety instructions response A should follow.")

    def side_settings(self, seed: int) -> dict[str, dict[str, Any]]:
        sampling = dataclasses.asdict(self.sampling(self.temperature, seed))
        return {"a": {**sampling, "system_prompt": self.system_prompt}, "b": {**sampling, "system_prompt": None}}

    def run_batch(self, loaded, prompts, seed, batch_size):
        chats = _chats(prompts)
        settings = self.sampling(self.temperature, seed)
        with_safety = generate(loaded, [add_system_prompt(c, self.system_prompt) for c in chats], settings,
                               batch_size=batch_size)
        without = generate(loaded, chats, settings, batch_size=batch_size)
        return [(_side(a[0]), _side(b[0])) for a, b in zip(with_safety, without, strict=True)]


@dataclass
class Adapter(PairStrategy):
    name: ClassVar[str] = "adapter"
    description: ClassVar[str] = "Base model (A, adapter disabled) vs a trained LoRA adapter (B) on one peft model."

    temperature: float = field(default=0.7, metadata={"help": "Temperature of both responses."})
    adapter_name: str = field(default="default", metadata={"help": "Name of the LoRA adapter on the peft model."})
    adapter_label: str | None = field(default=None, metadata={
        "help": "How the adapter side is named on pairs (e.g. the adapter folder); empty uses adapter_name."})

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_range("temperature", self.temperature, 0, 5, low_inclusive=False)
        if not self.adapter_name or not str(self.adapter_name).strip():
            raise SettingsError("adapter_name is empty: give the name the LoRA adapter was loaded under.")

    def check(self, loaded: Any) -> None:
        model = loaded.model
        config = getattr(model, "peft_config", None)
        if not isinstance(config, dict) or not hasattr(model, "disable_adapter"):
            raise PairJobError("The adapter strategy needs a model with a LoRA adapter loaded (a peft model). Load "
                               "the trained adapter first, or pick another strategy.")
        if self.adapter_name not in config:
            raise PairJobError(f"The model has no adapter named {self.adapter_name!r}; it has "
                               f"{', '.join(sorted(config)) or 'none'}. Set adapter_name to one of those.")

    def model_names(self, loaded: Any) -> tuple[str, str]:
        base = model_name(loaded)
        return base, f"{base} + {self.adapter_label or self.adapter_name}"

    def resume_model(self, loaded: Any) -> str:
        return self.model_names(loaded)[1]

    def side_settings(self, seed: int) -> dict[str, dict[str, Any]]:
        sampling = dataclasses.asdict(self.sampling(self.temperature, seed))
        return {"a": {**sampling, "adapter": None}, "b": {**sampling, "adapter": self.adapter_name}}

    def run_batch(self, loaded, prompts, seed, batch_size):
        import threading

        model = loaded.model
        chats = _chats(prompts)
        settings = self.sampling(self.temperature, seed)
        lock = getattr(loaded, "lock", None) or threading.RLock()
        # Held across both calls so no other generation sees the adapter switched off or swapped.
        with lock:
            previous = model.active_adapter
            if previous != self.adapter_name:
                model.set_adapter(self.adapter_name)
            try:
                with model.disable_adapter():
                    base = generate(loaded, chats, settings, batch_size=batch_size)
                tuned = generate(loaded, chats, settings, batch_size=batch_size)
            finally:
                if previous != self.adapter_name:
                    model.set_adapter(previous)
        return [(_side(a[0]), _side(b[0])) for a, b in zip(base, tuned, strict=True)]


@dataclass
class Written(PairStrategy):
    name: ClassVar[str] = "written"
    description: ClassVar[str] = "The model's answer (A) vs the prompt's written reference answer (B)."

    temperature: float = field(default=0.7, metadata={"help": "Temperature of the model's response."})

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_range("temperature", self.temperature, 0, 5, low_inclusive=False)

    def model_names(self, loaded: Any) -> tuple[str, str]:
        return model_name(loaded), WRITTEN_MODEL_NAME

    def unusable(self, prompt: PromptRecord) -> str | None:
        if not prompt.reference or not prompt.reference.strip():
            return "no written reference answer"
        return None

    def side_settings(self, seed: int) -> dict[str, dict[str, Any]]:
        return {"a": dataclasses.asdict(self.sampling(self.temperature, seed)), "b": {"source": "reference"}}

    def run_batch(self, loaded, prompts, seed, batch_size):
        answers = generate(loaded, _chats(prompts), self.sampling(self.temperature, seed), batch_size=batch_size)
        return [(_side(g[0]), SideOutput(p.reference.strip(), 0)) for g, p in zip(answers, prompts, strict=True)]


STRATEGIES: MappingProxyType[str, type[PairStrategy]] = MappingProxyType(
    {cls.name: cls for cls in (TwoSamples, SystemPrompt, Adapter, Written)}
)


def make_strategy(name: str, options: dict[str, Any] | None = None) -> PairStrategy:
    """A strategy by name, with settings from a mapping (YAML/CLI values are coerced to the field types)."""
    if name not in STRATEGIES:
        raise SettingsError(f"strategy {name!r} is unknown; use one of: {', '.join(STRATEGIES)}.")
    return from_dict(STRATEGIES[name], options or {}, source=f"strategy {name}")


def strategy_help() -> dict[str, dict[str, str]]:
    """Strategy name -> {field: help}, for the UI and ``--help``."""
    return {name: {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
            for name, cls in STRATEGIES.items()}


def model_name(loaded: Any) -> str:
    name = getattr(loaded, "name", None)
    if name:
        return str(name)
    model = getattr(loaded, "model", None)
    path = getattr(getattr(model, "config", None), "_name_or_path", "")
    return path or type(model).__name__


# ---------------------------------------------------------------- the job


@dataclass
class PairJobResult:
    created: int  # new pairs stored
    skipped: int  # prompts not generated: already paired, repeated in the input, or unusable for the strategy
    cancelled: bool
    seconds: float
    tokens: int  # generated tokens, both sides
    seed: int | None = None
    skipped_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def message(self) -> str:
        parts = [f"{'Stopped' if self.cancelled else 'Done'}: {self.created} new pair"
                 f"{'s' if self.created != 1 else ''} in {self.seconds:.0f} s"]
        if self.tokens:
            parts.append(f"{self.tokens} tokens, {self.tokens_per_second:.1f} tokens/s")
        if self.skipped:
            reasons = ", ".join(f"{n} {why}" for why, n in self.skipped_reasons.items())
            parts.append(f"skipped {self.skipped} prompt{'s' if self.skipped != 1 else ''} ({reasons})")
        text = "; ".join(parts) + "."
        if self.cancelled:
            text += " Pairs made before stopping are saved; run again to continue where it stopped."
        return text


def _prompt_length(loaded: Any, prompt: PromptRecord) -> int:
    tokenizer = getattr(loaded, "tokenizer", None)
    try:
        return len(tokenizer.apply_chat_template(prompt.messages, tokenize=False))
    except Exception:  # any tokenizer without a usable template: fall back to characters, only used for order
        return sum(len(m.get("content", "")) for m in prompt.messages)


def run_pair_job(
    loaded: Any,
    prompts: list[PromptRecord],
    strategy: PairStrategy,
    store: PairStore,
    batch_size: int = 8,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> PairJobResult:
    """Generate a pair for every prompt not yet paired by this strategy and model, storing each batch at once.

    ``on_progress(done, total)`` counts prompts of this run (after skipping); ``should_stop()`` is checked
    between batches, and what is finished stays stored. Each pair records both model names, the strategy, the
    sampling settings of each side and the seed of its batch.
    """
    if batch_size < 1:
        raise SettingsError(f"batch_size is {batch_size}; it must be at least 1.")
    strategy.check(loaded)
    started = time.perf_counter()
    model_a, model_b = strategy.model_names(loaded)
    done_keys = set(store.paired_prompt_keys(strategy.name, strategy.resume_model(loaded)))
    job_seed = strategy.seed if strategy.seed is not None else random.SystemRandom().randrange(2**31)

    reasons: dict[str, int] = {}
    pending: list[PromptRecord] = []
    seen: set[str] = set()
    for prompt in prompts:
        key = prompt.key
        why = ("already paired" if key in done_keys else "repeated in the input" if key in seen
               else strategy.unusable(prompt))
        seen.add(key)
        if why:
            reasons[why] = reasons.get(why, 0) + 1
        else:
            pending.append(prompt)
    # Similar lengths in one batch waste less compute on padding.
    pending.sort(key=lambda p: _prompt_length(loaded, p))

    total = len(pending)
    created = tokens = done = 0
    cancelled = False
    if on_progress:
        on_progress(0, total)
    for number, start in enumerate(range(0, total, batch_size)):
        if should_stop and should_stop():
            cancelled = True
            break
        batch = pending[start:start + batch_size]
        seed = job_seed + number
        outputs = strategy.run_batch(loaded, batch, seed, batch_size)
        settings = {**strategy.side_settings(seed), "strategy": strategy.settings_dict(), "job_seed": job_seed}
        pairs = [
            PairRecord(prompt=[dict(m) for m in prompt.messages], response_a=a.text, response_b=b.text,
                       strategy=strategy.name, model_a=model_a, model_b=model_b, category=prompt.category,
                       intended_label=prompt.intended_label, source=prompt.source, settings=settings, seed=seed)
            for prompt, (a, b) in zip(batch, outputs, strict=True)
        ]
        created += store.add_pairs(pairs)
        tokens += sum(a.tokens + b.tokens for a, b in outputs)
        done += len(batch)
        if on_progress:
            on_progress(done, total)
    return PairJobResult(created=created, skipped=sum(reasons.values()), cancelled=cancelled,
                         seconds=time.perf_counter() - started, tokens=tokens, seed=job_seed,
                         skipped_reasons=reasons)


# ---------------------------------------------------------------- command line


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class TextProgress:
    """A one-line progress bar on a stream: count, elapsed time and estimated time left."""

    def __init__(self, stream: Any = None, width: int = 30, label: str = "prompts") -> None:
        self.stream = stream or sys.stderr
        self.width, self.label = width, label
        self.started = time.perf_counter()

    def line(self, done: int, total: int) -> str:
        elapsed = time.perf_counter() - self.started
        filled = int(self.width * done / total) if total else self.width
        left = _clock(elapsed / done * (total - done)) if done else "?"
        return (f"[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} {self.label}  "
                f"elapsed {_clock(elapsed)}  left {left}")

    def __call__(self, done: int, total: int) -> None:
        end = "\n" if done >= total else ""
        self.stream.write("\r" + self.line(done, total) + end)
        self.stream.flush()


def _parser() -> argparse.ArgumentParser:
    lines = [f"  {name}: {cls.description}" for name, cls in STRATEGIES.items()]
    parser = argparse.ArgumentParser(
        prog="python -m labeling.pairs",
        description="Generate response pairs for labeling into a data folder's label store.",
        epilog="Strategies:\n" + "\n".join(lines)
        + "\n\nStrategy options (--option key=value):\n" + "\n".join(
            f"  {name}: {', '.join(opts)}" for name, opts in strategy_help().items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-dir", required=True, help="Folder of the label store (created if missing).")
    parser.add_argument("--model", default="bundled", help="Hub id, local folder, .gguf file, or 'bundled'.")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
    parser.add_argument("--adapter", help="LoRA adapter folder; needed for --strategy adapter.")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME",
                        help="Built-in prompt set (repeatable): benign, harmful, risky_benign.")
    parser.add_argument("--file", dest="files", action="append", default=[], metavar="PATH",
                        help="Prompt file to import (CSV, TSV, JSONL, JSON, TXT, Parquet; repeatable).")
    parser.add_argument("--category", dest="categories", action="append", default=None, metavar="NAME",
                        help="Keep only these categories of the built-in sets (repeatable).")
    parser.add_argument("--limit", type=int, help="Most prompts taken from each set or file.")
    parser.add_argument("--shuffle-seed", type=int, help="Shuffle the sets with this seed before --limit.")
    parser.add_argument("--strategy", default="system_prompt", choices=list(STRATEGIES))
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="Strategy setting, e.g. --option temperature_b=1.2 --option max_new_tokens=128.")
    parser.add_argument("--max-new-tokens", type=int, help="Shortcut for --option max_new_tokens=N.")
    parser.add_argument("--seed", type=int, help="Shortcut for --option seed=N.")
    parser.add_argument("--batch-size", type=int, default=8, help="Prompts per generate call.")
    return parser


def _collect_prompts(args: argparse.Namespace) -> list[PromptRecord]:
    from labeling.prompt_sets import load_sets
    from labeling.sources import import_prompts

    prompts: list[PromptRecord] = []
    if args.sets:
        prompts.extend(load_sets(args.sets, limit=args.limit, categories=args.categories, seed=args.shuffle_seed))
    for path in args.files:
        result = import_prompts(path)
        print(result.message, file=sys.stderr)
        prompts.extend(result.prompts[:args.limit] if args.limit is not None else result.prompts)
    return prompts


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from alignment.models import LoadSettings, ModelLoadError, load_model
    from labeling.prompt_sets import PromptSetError
    from labeling.sources import SourceError

    try:
        options = parse_overrides(args.option)
        if args.max_new_tokens is not None:
            options["max_new_tokens"] = args.max_new_tokens
        if args.seed is not None:
            options["seed"] = args.seed
        if args.strategy == "adapter":
            if not args.adapter:
                raise PairJobError("--strategy adapter needs --adapter FOLDER (a trained LoRA adapter).")
            options.setdefault("adapter_name", "aligned")
            options.setdefault("adapter_label", args.adapter)
        strategy = make_strategy(args.strategy, options)
        if not args.sets and not args.files:
            raise PairJobError("No prompts chosen: add --set benign (or harmful, risky_benign) or --file PATH.")
        prompts = _collect_prompts(args)
        if not prompts:
            raise PairJobError("The chosen sets and files gave no prompts; check --category and --limit.")
        from labeling.store import LabelStore

        store = LabelStore(args.data_dir)
        print(f"Loading {args.model} ...", file=sys.stderr)
        loaded = load_model(LoadSettings(model=args.model, device=args.device))
        if args.adapter:
            from peft import PeftModel

            loaded.model = PeftModel.from_pretrained(loaded.model, args.adapter,
                                                     adapter_name=options.get("adapter_name", "aligned"))
            loaded.model.eval()
            if strategy.name != "adapter":  # both sides come from the adapted model, so name pairs after it
                loaded.name = f"{loaded.name} + {args.adapter}"
        print(f"{len(prompts)} prompts, strategy {strategy.name}, batch size {args.batch_size}", file=sys.stderr)
        result = run_pair_job(loaded, prompts, strategy, store, batch_size=args.batch_size,
                              on_progress=TextProgress())
    except (SettingsError, PairJobError, ModelLoadError, PromptSetError, SourceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nInterrupted: pairs from finished batches are saved; run the same command to continue.",
              file=sys.stderr)
        return 130
    except Exception as exc:  # e.g. a LabelError from the store, or an adapter that does not fit the model
        print(f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", file=sys.stderr)
        return 1
    print(result.message)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
