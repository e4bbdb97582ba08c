"""Generate tab (admins): gather prompts, then generate a pair of responses for each into the label store.

Prompts come from the built-in sets, an uploaded file (CSV/TSV/JSONL/JSON/TXT/Parquet), text typed one prompt
a line, a prompt file pulled from the Hub on the Dataset tab, or a Hub dataset id (fetched only when asked).
Each source adds to one per-session prompt list; the pair job (``labeling.pairs.run_pair_job``) then runs with
a progress bar and a Cancel button that stops it between batches, keeping the pairs already made.

Every action is an API endpoint (``/prompts_builtin``, ``/prompts_typed``, ``/generate_pairs``,
``/generate_cancel`` ...) so tests drive the tab through gradio_client; the admin check is in each handler.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import gradio as gr

from alignment.generation import MAX_NEW_TOKENS_CAP
from alignment.models import ModelLoadError
from alignment.registry import BASE
from alignment.settings import SettingsError
from labeling.pairs import STRATEGIES, PairJobError, make_strategy, run_pair_job, strategy_help
from labeling.prompt_sets import PromptSetError, describe_sets, load_sets
from labeling.records import PromptRecord
from labeling.sources import ImportResult, SourceError, import_prompts, load_hub_dataset, parse_typed
from ui.cancel import JobAlreadyRunning, SessionJobs
from ui.context import AppContext
from ui.identity import require_admin

PROMPT_FILES_DIR = "prompts"  # under data_dir: prompt files pulled from the Hub on the Dataset tab
PREVIEW_COLUMNS = ["category", "intended_label", "source", "prompt"]
MAX_PROMPTS = 5000
# Which form fields feed which strategy option; a strategy takes only the options it declares.
OPTION_FIELDS = ("max_new_tokens", "seed", "temperature_a", "temperature_b", "temperature", "system_prompt",
                 "adapter_name")


def prompt_files(ctx: AppContext) -> list[str]:
    folder = ctx.data_dir / PROMPT_FILES_DIR
    return sorted(path.name for path in folder.glob("*.jsonl")) if folder.is_dir() else []


def _records(state: list[dict] | None) -> list[PromptRecord]:
    return [PromptRecord(**row) for row in (state or [])]


def preview(state: list[dict] | None) -> list[list[Any]]:
    return [[p.category, p.intended_label or "", p.source, p.text] for p in _records(state)]


def add_prompts(state: list[dict] | None, new: list[PromptRecord]) -> tuple[list[dict], int, int]:
    """The list with ``new`` appended, leaving out prompts already in it; returns (list, added, repeated)."""
    rows = list(state or [])
    keys = {PromptRecord(**row).key for row in rows}
    added = repeated = 0
    for prompt in new:
        if prompt.key in keys:
            repeated += 1
            continue
        if len(rows) >= MAX_PROMPTS:
            raise gr.Error(f"The prompt list is full ({MAX_PROMPTS} prompts). Generate these first, or clear it.")
        keys.add(prompt.key)
        rows.append(dataclasses.asdict(prompt))
        added += 1
    return rows, added, repeated


def job_options(strategy: str, values: dict[str, Any]) -> dict[str, Any]:
    """The strategy's options from the form: only fields it declares, empty seed left to the job."""
    declared = strategy_help().get(strategy, {})
    options = {}
    for name in OPTION_FIELDS:
        value = values.get(name)
        if name not in declared or value is None or value == "":
            continue
        if name in ("max_new_tokens", "seed"):
            value = int(value)
        options[name] = value
    return options


def _int_or_none(value: Any, what: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{what} must be a whole number or empty, got {value!r}.") from None
    if number != int(number):
        raise gr.Error(f"{what} must be a whole number, got {value!r}.")
    return int(number)


def build(ctx: AppContext, demo: gr.Blocks) -> None:
    # One cancel flag per browser session (request.session_hash), alive only while that session's job runs.
    # It lives in this build() call, so each app has its own and nothing is module-level.
    jobs = SessionJobs()

    sets = describe_sets()
    all_categories = sorted({c for s in sets for c in s["categories"]})
    prompts = gr.State([])

    gr.Markdown("Admins only: gather prompts below (each source **adds** to the list), then generate two responses "
                "for every prompt. Prompts already paired with the same strategy and model are skipped, so a "
                "stopped job continues where it stopped.")
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Tab("Built-in sets"):
                set_names = gr.Dropdown(choices=[s["name"] for s in sets], value=[], multiselect=True,
                                        label="Sets", info="; ".join(f"{s['name']}: {s['prompts']} prompts"
                                                                     for s in sets))
                categories = gr.Dropdown(choices=all_categories, value=[], multiselect=True,
                                         label="Categories (empty = all)")
                with gr.Row():
                    limit = gr.Number(value=None, precision=0, minimum=1, label="Limit per set (blank = all)")
                    shuffle_seed = gr.Number(value=None, precision=0, label="Shuffle seed (blank = file order)")
                add_builtin = gr.Button("Add built-in prompts")
            with gr.Tab("Upload a file"):
                upload = gr.File(label="Prompt file", file_types=[".csv", ".tsv", ".jsonl", ".json", ".txt",
                                                                  ".parquet"], type="filepath")
                add_upload = gr.Button("Add prompts from the file")
            with gr.Tab("Type prompts"):
                typed = gr.Textbox(label="Prompts, one per line", lines=6, max_length=200_000)
                with gr.Row():
                    typed_category = gr.Textbox(value="typed", label="Category", max_length=64)
                    typed_label = gr.Dropdown(choices=["", "benign", "harmful"], value="", label="Intended label")
                add_typed = gr.Button("Add typed prompts")
            with gr.Tab("Pulled files"):
                saved = gr.Dropdown(choices=prompt_files(ctx), value=None, label="Prompt file pulled on the Dataset "
                                    "tab", info=f"Files in {ctx.data_dir / PROMPT_FILES_DIR}.")
                with gr.Row():
                    refresh_saved = gr.Button("Refresh list", size="sm")
                    add_saved = gr.Button("Add prompts from this file")
            with gr.Tab("Hub dataset"):
                hub_id = gr.Textbox(label="Hub dataset id", placeholder="owner/name", max_length=200,
                                    info="Fetched from the Hugging Face Hub only when you press the button.")
                hub_split = gr.Textbox(value="train", label="Split", max_length=64)
                add_hub = gr.Button("Add prompts from the Hub")
            import_message = gr.Textbox(label="Import result", interactive=False, lines=2)
        with gr.Column(scale=2):
            strategy = gr.Radio(choices=list(STRATEGIES), value="system_prompt", label="Pair strategy",
                                info=" ".join(f"{name}: {cls.description}" for name, cls in STRATEGIES.items()))
            help_ = strategy_help()
            with gr.Row():
                temperature_a = gr.Number(value=0.7, label="Temperature A (two_samples)",
                                          info=help_["two_samples"]["temperature_a"])
                temperature_b = gr.Number(value=1.1, label="Temperature B (two_samples)",
                                          info=help_["two_samples"]["temperature_b"])
            temperature = gr.Number(value=0.7, label="Temperature (other strategies)",
                                    info=help_["system_prompt"]["temperature"])
            system_prompt = gr.Textbox(value=STRATEGIES["system_prompt"]().system_prompt, lines=3,
                                       label="Safety system prompt (system_prompt)")
            adapter = gr.Dropdown(choices=list(ctx.registry.adapters()), value=None, label="Adapter (adapter)",
                                  info="A trained adapter loaded in the app; the base side has it disabled.")
            with gr.Row():
                max_new_tokens = gr.Slider(8, MAX_NEW_TOKENS_CAP, value=128, step=8, label="Max new tokens",
                                           info=help_["two_samples"]["max_new_tokens"])
                seed = gr.Number(value=None, precision=0, label="Seed (blank = random)")
                batch_size = gr.Slider(1, 64, value=8, step=1, label="Batch size",
                                       info="Prompts per generate call; larger is faster until memory runs out.")
    table = gr.Dataframe(headers=PREVIEW_COLUMNS, value=[], label="Prompt list", interactive=False, wrap=True,
                         max_height=320)
    with gr.Row():
        clear = gr.Button("Clear the list", size="sm")
        run = gr.Button("Generate pairs", variant="primary")
        cancel = gr.Button("Cancel", variant="stop")
    result = gr.Textbox(label="Job result", interactive=False, lines=2)

    list_outputs = [prompts, table, import_message]

    def added(state: list[dict] | None, imported: ImportResult | list[PromptRecord], what: str) -> tuple[Any, ...]:
        new = imported.prompts if isinstance(imported, ImportResult) else imported
        rows, count, repeated = add_prompts(state, new)
        lead = imported.message + " " if isinstance(imported, ImportResult) else ""
        more = f" ({repeated} already in the list)" if repeated else ""
        return rows, preview(rows), f"{lead}Added {count} prompts from {what}{more}; the list has {len(rows)}."

    def from_builtin(state, names, cats, lim, seed_value, request: gr.Request):
        require_admin(ctx, request, action="load prompts")
        if not names:
            raise gr.Error("Pick at least one built-in set.")
        try:
            records = load_sets(names, limit=_int_or_none(lim, "Limit"), categories=cats or None,
                                seed=_int_or_none(seed_value, "Shuffle seed"))
        except PromptSetError as exc:
            raise gr.Error(str(exc)) from exc
        return added(state, records, ", ".join(names))

    def from_upload(state, path, request: gr.Request):
        require_admin(ctx, request, action="load prompts")
        if not path:
            raise gr.Error("Choose a file first (CSV, TSV, JSONL, JSON, TXT or Parquet).")
        try:
            imported = import_prompts(path, filename=Path(path).name)
        except SourceError as exc:
            raise gr.Error(str(exc)) from exc
        return added(state, imported, "the file")

    def from_typed(state, text, category, label, request: gr.Request):
        require_admin(ctx, request, action="load prompts")
        try:
            imported = parse_typed(text, category=(category or "").strip() or "typed", intended_label=label or None)
        except SourceError as exc:
            raise gr.Error(str(exc)) from exc
        return added(state, imported, "the typed text")

    def from_saved(state, name, request: gr.Request):
        require_admin(ctx, request, action="load prompts")
        if not name or name not in prompt_files(ctx):
            raise gr.Error("Pick one of the pulled prompt files (pull prompts on the Dataset tab first).")
        try:
            imported = import_prompts(ctx.data_dir / PROMPT_FILES_DIR / name)
        except SourceError as exc:
            raise gr.Error(str(exc)) from exc
        return added(state, imported, name)

    def from_hub(state, dataset_id, split, request: gr.Request, oauth_token: gr.OAuthToken | None = None):
        require_admin(ctx, request, action="load prompts from the Hub")
        try:
            imported = load_hub_dataset(dataset_id, split=(split or "train").strip(),
                                        token=oauth_token.token if oauth_token else None)
        except SourceError as exc:
            raise gr.Error(str(exc)) from exc
        return added(state, imported, (dataset_id or "").strip())

    def clear_list(request: gr.Request):
        return [], [], "The prompt list is empty."

    def generate_pairs(state, strategy_name, temp_a, temp_b, temp, sys_prompt, adapter_name, max_tokens,
                       seed_value, batch, request: gr.Request, progress=gr.Progress()) -> str:  # noqa: B008
        require_admin(ctx, request, action="generate pairs")
        records = _records(state)
        if not records:
            raise gr.Error("The prompt list is empty: add prompts from a set, a file, typed text or the Hub first.")
        if strategy_name == "adapter" and not adapter_name:
            raise gr.Error("The adapter strategy needs a trained adapter: load one (Train or Compare tab), then "
                           "pick it here; or choose another strategy.")
        values = {"max_new_tokens": max_tokens, "seed": _int_or_none(seed_value, "Seed"), "temperature_a": temp_a,
                  "temperature_b": temp_b, "temperature": temp, "system_prompt": sys_prompt,
                  "adapter_name": adapter_name}
        try:
            options = job_options(strategy_name, values)
            if strategy_name == "adapter":
                options["adapter_label"] = ctx.registry.adapters().get(adapter_name) or adapter_name
            job_strategy = make_strategy(strategy_name, options)
        except (SettingsError, ValueError) as exc:
            raise gr.Error(str(exc)) from exc
        def on_progress(done: int, total: int) -> None:
            progress((done, total), desc="Generating pairs", unit="prompts")

        session = request.session_hash or "local"
        try:
            stop = jobs.start(session)
        except JobAlreadyRunning:
            raise gr.Error("A job of yours is already running; wait for it or cancel it.") from None
        try:
            loaded = ctx.registry.loaded
            if strategy_name != "adapter" and ctx.registry.adapters():
                # With adapters loaded the weights are a peft model: hold the base configuration (adapter
                # disabled, model lock held) for the whole job so every pair really comes from the base.
                with ctx.registry.side(BASE):
                    outcome = run_pair_job(loaded, records, job_strategy, ctx.store, batch_size=int(batch),
                                           on_progress=on_progress, should_stop=stop.is_set)
            else:
                # The adapter strategy switches adapters itself under the model lock; plain strategies lock per
                # generate call, so the Playground can answer between batches.
                outcome = run_pair_job(loaded, records, job_strategy, ctx.store, batch_size=int(batch),
                                       on_progress=on_progress, should_stop=stop.is_set)
        except (ModelLoadError, PairJobError, SettingsError) as exc:
            raise gr.Error(str(exc)) from exc
        finally:
            jobs.finish(session)
        return outcome.message

    def cancel_job(request: gr.Request) -> str:
        if not jobs.cancel(request.session_hash or "local"):
            return "No job of yours is running."
        return "Stopping after the current batch; pairs already made are kept."

    def refresh_choices() -> tuple[Any, Any]:
        return gr.update(choices=prompt_files(ctx)), gr.update(choices=list(ctx.registry.adapters()))

    add_builtin.click(from_builtin, [prompts, set_names, categories, limit, shuffle_seed], list_outputs,
                      api_name="prompts_builtin")
    add_upload.click(from_upload, [prompts, upload], list_outputs, api_name="prompts_file")
    add_typed.click(from_typed, [prompts, typed, typed_category, typed_label], list_outputs,
                    api_name="prompts_typed")
    add_saved.click(from_saved, [prompts, saved], list_outputs, api_name="prompts_pulled")
    add_hub.click(from_hub, [prompts, hub_id, hub_split], list_outputs, api_name="prompts_hub")
    clear.click(clear_list, None, list_outputs, api_name="prompts_clear")
    run.click(generate_pairs, [prompts, strategy, temperature_a, temperature_b, temperature, system_prompt, adapter,
                               max_new_tokens, seed, batch_size], [result], api_name="generate_pairs",
              concurrency_limit=1, concurrency_id="pair_generation")
    # concurrency_limit=None: a cancel must never wait in the queue behind the job it cancels.
    cancel.click(cancel_job, None, [result], api_name="generate_cancel", concurrency_limit=None)
    refresh_saved.click(refresh_choices, None, [saved, adapter], api_name=False)
    demo.load(refresh_choices, None, [saved, adapter], api_name=False)
