"""Align Studio: label preferences, train DPO, red-team and compare a small chat model, in one Gradio app.

Run:    python app.py [--model bundled] [--data-dir data] [--host 127.0.0.1] [--port 7860] [--share]
Spaces: the Space runs ``python app.py``; settings can also come from ALIGN_* environment variables.
Reload: ``gradio app.py`` finds the module-level ``demo``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import gradio as gr

from alignment.models import LoadSettings, ModelLoadError
from alignment.registry import ModelRegistry
from alignment.settings import SettingsError
from ui import compare, dataset, generate, label, playground, redteam, train
from ui.context import AppContext
from ui.shortcuts import LAUNCH_JS

TITLE = "Align Studio"
INTRO = (
    "Take a small chat model from *eagerly completes any request* to *refuses harmful requests gracefully and "
    "stays helpful*: chat with it, label which of two answers is better, train with DPO, red-team, compare."
)
# (tab title, module) in the order users meet them; a tab is listed only once it exists.
MAX_UPLOAD = "10mb"  # the same cap labeling.sources applies to prompt files; gradio refuses bigger uploads early
TABS = [("Playground", playground), ("Generate", generate), ("Label", label), ("Dataset", dataset),
        ("Train", train), ("Red-team", redteam), ("Compare", compare)]


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
    parser.add_argument("--auth", action="append", default=[], metavar="USER:PASS",
                        help="Require sign-in; repeat for several users. Or --auth-file with one user:pass a line.")
    parser.add_argument("--auth-file", default=env("AUTH_FILE"), help="File of user:pass lines.")
    parser.add_argument("--admins", default=env("ADMINS", ""),
                        help="Comma-separated user names allowed to train, push, generate, load models and edit "
                        "guidelines. On a Space the owner is always an admin.")
    parser.add_argument("--labels-per-pair", type=int, default=int(env("LABELS_PER_PAIR", "1") or 1),
                        help="How many different labelers each pair goes to (k).")
    parser.add_argument("--hub-repo", default=env("HUB_REPO"), metavar="OWNER/NAME",
                        help="Dataset repo to restore raw labels from at start and sync them to while labeling.")
    parser.add_argument("--sync-minutes", type=float, default=float(env("SYNC_MINUTES", "5") or 5),
                        help="How often raw labels are pushed to --hub-repo (a restart loses at most this much).")
    parser.add_argument("--lazy", action="store_true",
                        help="Load the model on first use instead of before serving.")
    return parser.parse_args(argv)


def read_auth(args: argparse.Namespace) -> list[tuple[str, str]]:
    lines = list(args.auth)
    if args.auth_file:
        path = Path(args.auth_file)
        if not path.is_file():
            raise SettingsError(f"--auth-file {path} does not exist.")
        lines += [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                  if line.strip() and not line.lstrip().startswith("#")]
    users = []
    for line in lines:
        user, sep, password = line.partition(":")
        if not sep or not user.strip() or not password:
            raise SettingsError(f"Auth entry {user.strip() or line!r} must look like user:password.")
        users.append((user.strip(), password))
    return users


def make_context(args: argparse.Namespace) -> AppContext:
    settings = LoadSettings(model=args.model, device=args.device, dtype=args.dtype,
                            load_in_4bit=False if args.no_4bit else None)
    admins = frozenset(name.strip() for name in (args.admins or "").split(",") if name.strip())
    return AppContext(registry=ModelRegistry(settings), data_dir=Path(args.data_dir), runs_dir=Path(args.runs_dir),
                      admins=admins, auth_enabled=bool(args.auth or args.auth_file), share=args.share,
                      label_k=args.labels_per_pair, hub_repo=args.hub_repo)


def start_hub_sync(ctx: AppContext, minutes: float) -> None:
    """Restore raw labels from --hub-repo, then keep pushing new ones. A Hub problem is reported, not fatal:
    labeling goes on locally and the sync retries every interval."""
    from labeling.hub import HubError
    from labeling.hub_sync import restore_from_hub, start_sync

    try:
        result = restore_from_hub(ctx.store, ctx.hub_repo)
        print(result.describe(), file=sys.stderr, flush=True)
    except HubError as exc:
        print(f"warning: could not restore labels from {ctx.hub_repo}: {exc}. Labeling continues locally; "
              "the sync will keep trying.", file=sys.stderr, flush=True)
    ctx.services["hub_sync"] = start_sync(ctx.store, ctx.hub_repo, interval_minutes=minutes)


def build_demo(ctx: AppContext) -> gr.Blocks:
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        if ctx.on_space:
            # Hugging Face sign-in (README front matter: hf_oauth): labels are credited to the account, and the
            # Space's owner is an admin.
            gr.LoginButton()
        for title, module in TABS:
            with gr.Tab(title) as tab:
                on_select = module.build(ctx, demo)
            if on_select is not None:
                # Model sides change at run time (an adapter loaded in the Train tab): opening a tab re-reads them.
                refresh, outputs = on_select
                tab.select(refresh, None, outputs, api_name=False, show_progress="hidden")
    return demo


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        auth = read_auth(args)
        ctx = make_context(args)
        if not args.lazy:
            print(f"Loading {args.model} ...", file=sys.stderr, flush=True)
            loaded = ctx.registry.loaded
            print(f"Loaded {loaded.name} on {loaded.device} ({loaded.dtype}) in {loaded.load_seconds:.1f} s",
                  file=sys.stderr, flush=True)
    except (ModelLoadError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if ctx.hub_repo:
        start_hub_sync(ctx, args.sync_minutes)
    if args.share and not auth:
        print("warning: --share opens a public link and no --auth is set: anyone with the link can label, and "
              "nobody can sign in as admin (training, pushing and generating are refused). Add --auth user:pass "
              "and --admins user.", file=sys.stderr, flush=True)
    demo = build_demo(ctx)
    # A Space restart or `kill` sends SIGTERM: turn it into the Ctrl-C path so gradio closes cleanly and the last
    # label push below still runs.
    signal.signal(signal.SIGTERM, _interrupt)
    demo.queue(default_concurrency_limit=4).launch(
        server_name=args.host, server_port=args.port, share=args.share, auth=auth or None, js=LAUNCH_JS,
        max_file_size=MAX_UPLOAD,
        auth_message="Sign in to label. Ask the app's owner for an account.")
    sync = ctx.services.get("hub_sync")
    if sync is not None:
        print(f"Last push of labels to {ctx.hub_repo}: {sync.stop().describe()}", file=sys.stderr, flush=True)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def __getattr__(name: str):
    # `gradio app.py` (reload mode) and importers asking for `demo` get one built from ALIGN_* settings;
    # plain imports (tests) do not pay for it.
    if name == "demo":
        return build_demo(make_context(parse_args([])))
    raise AttributeError(name)


if __name__ == "__main__":
    raise SystemExit(main())
