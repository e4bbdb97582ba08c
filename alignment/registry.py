"""The one place the app keeps its loaded models and LoRA adapters.

The aligned model is the base with a LoRA adapter; the base is the same weights with the adapter disabled, so
base and aligned share one copy of the weights. ``build_demo()`` makes one :class:`ModelRegistry`; nothing here
is module-level state. Generation on a side goes through :meth:`ModelRegistry.side`, which holds the model's
lock so a toggle in one request can never change the weights under another request's generation.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignment.models import LoadedModel, LoadSettings, ModelLoadError, load_model

BASE = "base"


@dataclass
class SideView:
    """What ``generate``/``stream_chat`` need for one side: model, tokenizer and a lock already held."""

    model: Any
    tokenizer: Any
    name: str
    lock: Any = contextlib.nullcontext()
    gate: Any = None  # an adapter's refusal gate (alignment.gate): generation routes each chat through it


def adapter_base_model(adapter_dir: str | Path) -> str | None:
    import json

    config = Path(adapter_dir) / "adapter_config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")


class ModelRegistry:
    """Holds the base model and any adapters loaded onto it; thread-safe."""

    def __init__(self, settings: LoadSettings | None = None, loaded: LoadedModel | None = None):
        self._settings = settings or LoadSettings()
        self._loaded = loaded
        self._adapters: dict[str, str] = {}  # adapter name -> folder
        self._gates: dict[str, Any] = {}  # adapter name -> its refusal gate, for adapters that have one
        self._lock = threading.RLock()

    @property
    def loaded(self) -> LoadedModel:
        with self._lock:
            if self._loaded is None:
                self._loaded = load_model(self._settings)
            return self._loaded

    @property
    def model_name(self) -> str:
        return self._loaded.name if self._loaded else self._settings.model

    def replace_base(self, settings: LoadSettings) -> LoadedModel:
        """Load another base model; adapters trained for the old one are dropped."""
        new = load_model(settings)
        with self._lock:
            self._settings, self._loaded, self._adapters, self._gates = settings, new, {}, {}
        return new

    def adapters(self) -> dict[str, str]:
        with self._lock:
            return dict(self._adapters)

    def gate(self, name: str) -> Any:
        """The refusal gate an adapter was loaded with (alignment.gate.RefusalGate), or None."""
        with self._lock:
            return self._gates.get(name)

    def sides(self) -> list[str]:
        return [BASE, *self.adapters()]

    def load_adapter(self, path: str | Path, name: str | None = None) -> str:
        """Load a LoRA adapter folder (or Hub id) onto the base weights, with its refusal gate when it has one
        (alignment.gate); returns its name."""
        from peft import PeftModel

        from alignment.gate import GateError, load_gate, load_hub_gate

        path = str(path)
        local = Path(path)
        if local.exists() and not (local / "adapter_config.json").is_file():
            raise ModelLoadError(f"{path} has no adapter_config.json: pick the adapter/ folder of a training run.")
        loaded = self.loaded
        try:
            # Read before the adapter goes onto the weights, so a bad gate file leaves the registry as it was.
            gate = load_gate(local, loaded.model, loaded.name) if local.exists() else None
        except GateError as exc:
            raise ModelLoadError(str(exc)) from exc
        name = name or (local.parent.name if local.name == "adapter" else local.name) or "aligned"
        name = name.replace(".", "_")  # peft module names may not contain dots
        with loaded.lock, self._lock:
            if name in self._adapters:
                if self._adapters[name] == path:
                    return name
                name = f"{name}_{len(self._adapters)}"
            try:
                if isinstance(loaded.model, PeftModel):
                    loaded.model.load_adapter(path, adapter_name=name)
                else:
                    loaded.model = PeftModel.from_pretrained(loaded.model, path, adapter_name=name)
            except (OSError, ValueError, RuntimeError) as exc:
                raise ModelLoadError(
                    f"Could not load adapter {path!r} onto {loaded.name}: {str(exc).splitlines()[0]}. "
                    "An adapter only loads onto the base model it was trained from."
                ) from exc
            loaded.model.eval()
            if not local.exists():
                try:
                    gate = load_hub_gate(path, loaded.model, loaded.name)
                except Exception as exc:  # the Hub client raises many kinds; the adapter must not stay half-loaded
                    with contextlib.suppress(Exception):
                        loaded.model.delete_adapter(name)
                    raise ModelLoadError(f"Loaded adapter {path!r} but not its refusal gate: {exc}") from exc
            self._adapters[name] = path
            if gate is not None:
                self._gates[name] = gate
        return name

    def stream(self, name: str, chat: list[dict[str, str]], settings: Any,
               guard: Callable[[], contextlib.AbstractContextManager[Any]] | None = None) -> Iterator[str]:
        """Stream one chat on a side. The side (and ``guard``, e.g. a per-user slot) is held by the generating
        thread for the generation only, so a reader that stops reading never keeps the weights locked."""
        from alignment.generation import stream_chat

        @contextlib.contextmanager
        def hold() -> Iterator[SideView]:
            with guard() if guard else contextlib.nullcontext(), self.side(name) as view:
                yield view

        return stream_chat(self.loaded, chat, settings, hold=hold)

    @contextlib.contextmanager
    def side(self, name: str = BASE) -> Iterator[SideView]:
        """Hold the weights in one configuration (base, or an adapter enabled) for the duration."""
        loaded = self.loaded
        with loaded.lock:
            model = loaded.model
            if name == BASE:
                ctx = model.disable_adapter() if self._adapters else contextlib.nullcontext()
                with ctx:
                    yield SideView(model=model, tokenizer=loaded.tokenizer, name=BASE)
                return
            if name not in self._adapters:
                raise ModelLoadError(f"No adapter named {name!r} is loaded. Loaded: {', '.join(self.sides())}.")
            model.set_adapter(name)
            yield SideView(model=model, tokenizer=loaded.tokenizer, name=name, gate=self._gates.get(name))
