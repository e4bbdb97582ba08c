"""Align Studio: label preferences, train DPO, red-team and compare a small chat model, in one Gradio app.

Run:    python app.py [--model bundled] [--data-dir data] [--host 127.0.0.1] [--port 7860] [--share]
Spaces: the Space runs ``python app.py``; settings can also come from ALIGN_* environment variables.
Reload: ``gradio app.py`` finds the module-level ``demo``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import gradio as gr

from alignment.models import LoadSettings, ModelLoadError
from alignment.registry import ModelRegistry
from alignment.settings import SettingsError
from ui import playground
from ui.context import AppContext

TITLE = "Align Studio"
INTRO = (
    "Take a small chat model from *eagerly completes any request* to *refuses harmful requests gracefully and "
    "stays helpful*: chat with it, label which of two answers is better, train with DPO, red-team, compare."
)
# (tab title, module) in the order users meet them; a tab is listed only once it exists.
TABS = [("Playground", playground)]


def env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"ALIGN_{name}", default)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=TITLE + ": " + INTRO.replace("*", ""))
    parser.add_argument("--model", default=env("MODEL", "bundled"),
                        help="Hub id, local folder, .gguf file, or 'bundled' (default; no network needed).")
    parser.add_argument("--device", default=env("DEVICE", "auto"), help="auto, cpu, cuda or cuda:N.")
    parser.add_argument("--dtype", default=env("DTYPE", "auto"), help="auto, float32, float16 or bfloat16.")
    parser.add_argument("--no-4bit", action="store_true", help="Do not load the model in 4-bit on CUDA.")
    parser.add_argument("--data-dir", default=env("DATA_DIR", "data"), help="Where labels and pairs are stored.")
    parser.add_argument("--runs-dir", default=env("RUNS_DIR", "runs"), help="Where training runs are written.")
    parser.add_argument("--host", default=env("HOST", "127.0.0.1"),
                        help="Address to listen on (0.0.0.0 to accept other machines; Spaces sets this).")
    parser.add_argument("--port", type=int, default=int(env("PORT", "7860") or 7860))
    parser.add_argument("--share", action="store_true", help="Open a public gradio.live link (Colab).")
    parser.add_argument("--lazy", action="store_true",
                        help="Load the model on first use instead of before serving.")
    return parser.parse_args(argv)


def make_context(args: argparse.Namespace) -> AppContext:
    settings = LoadSettings(model=args.model, device=args.device, dtype=args.dtype,
                            load_in_4bit=False if args.no_4bit else None)
    return AppContext(registry=ModelRegistry(settings), data_dir=Path(args.data_dir), runs_dir=Path(args.runs_dir),
                      share=args.share)


def build_demo(ctx: AppContext) -> gr.Blocks:
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        for title, module in TABS:
            with gr.Tab(title):
                module.build(ctx, demo)
    return demo


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        ctx = make_context(args)
        if not args.lazy:
            print(f"Loading {args.model} ...", file=sys.stderr, flush=True)
            loaded = ctx.registry.loaded
            print(f"Loaded {loaded.name} on {loaded.device} ({loaded.dtype}) in {loaded.load_seconds:.1f} s",
                  file=sys.stderr, flush=True)
    except (ModelLoadError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    demo = build_demo(ctx)
    demo.queue(default_concurrency_limit=4).launch(server_name=args.host, server_port=args.port, share=args.share)
    return 0


def __getattr__(name: str):
    # `gradio app.py` (reload mode) and importers asking for `demo` get one built from ALIGN_* settings;
    # plain imports (tests) do not pay for it.
    if name == "demo":
        return build_demo(make_context(parse_args([])))
    raise AttributeError(name)


if __name__ == "__main__":
    raise SystemExit(main())
