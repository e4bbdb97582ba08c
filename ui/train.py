"""Train tab: DPO with LoRA on the labelled pairs (or a file / Hub dataset), in the app's own process.

Pick a recipe (recipes/*.yaml), adjust the settings that matter, see the memory plan, then Start (admins only).
The run goes through :class:`alignment.training_run.TrainingManager` on its own thread, so labelers keep labelling
while it trains; a timer refreshes progress and the charts every 2 s. Cancel stops within one step and saves a
checkpoint; Resume continues it. A finished adapter can be loaded as a model side for the other tabs (no restart)
and pushed to a Hub model repo. Every action is an API endpoint (``/train_plan``, ``/train_start``,
``/train_cancel``, ``/train_resume``, ``/train_status``, ``/train_runs``, ``/train_load_adapter``,
``/train_push_adapter`` ...) for gradio_client tests.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import gradio as gr

from alignment.hub_models import push_adapter
from alignment.memory import MemoryPlan, estimate, format_size, parse_size
from alignment.models import BUNDLED_DISPLAY_NAME, BUNDLED_NAME, ModelLoadError, resolve_source
from alignment.settings import SettingsError, from_dict, load_yaml, parse_overrides, to_dict
from alignment.train import DatasetError, latest_checkpoint, load_preference_rows, split_rows
from alignment.train_config import TrainConfig
from alignment.training_run import RunBusy
from labeling.export import ExportError, build_preference_rows, export
from labeling.hub import HubError
from ui.context import AppContext
from ui.identity import require_admin

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
DEFAULT_RECIPE = "cpu-lora"
SOURCES = ("labelled pairs in this app", "a file or Hub dataset")
EXPORTS_DIR = "exports"
POLL_SECONDS = 2.0
BAR_WIDTH = 30
# The settings the form shows, in order; everything else comes from the recipe or the overrides box.
FORM_FIELDS = ("run_name", "beta", "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
               "gradient_accumulation_steps", "max_length", "lora_r", "lora_alpha", "warmup", "seed", "eval_split",
               "save_steps", "merge_after", "refusal_gate")
LABELS = {"run_name": "Run name", "beta": "Beta (KL strength)", "learning_rate": "Learning rate",
          "num_train_epochs": "Epochs", "max_steps": "Max steps (-1 = by epochs)",
          "per_device_train_batch_size": "Batch size", "gradient_accumulation_steps": "Gradient accumulation",
          "max_length": "Max length (tokens)", "lora_r": "LoRA r (0 = full fine-tune)", "lora_alpha": "LoRA alpha",
          "warmup": "Warmup (share of steps)", "seed": "Seed", "eval_split": "Eval split",
          "save_steps": "Save a checkpoint every N steps", "merge_after": "Also save merged weights",
          "refusal_gate": "Fit a refusal gate"}
# (chart title, {log key: series name}); TRL 1.16 logs these names (alignment.train.CHART_KEYS).
CHARTS = (("Loss", {"loss": "loss"}), ("Reward margin", {"rewards/margins": "margin"}),
          ("Reward accuracy", {"rewards/accuracies": "accuracy"}),
          ("Chosen and rejected rewards", {"rewards/chosen": "chosen", "rewards/rejected": "rejected"}),
          ("Learning rate", {"learning_rate": "learning rate"}))
RUN_COLUMNS = ["run", "steps", "loss", "accuracy", "eval accuracy", "base model", "dataset",
               "adapter folder"]
TERMINAL = ("finished", "failed", "cancelled")


# --- recipes and the form -------------------------------------------------------------------------------------

def recipe_names() -> list[str]:
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


def recipe_path(name: str) -> Path:
    if name not in recipe_names():
        raise gr.Error(f"Recipe {name!r} does not exist; pick one of: {', '.join(recipe_names())}.")
    return RECIPES_DIR / f"{name}.yaml"


def recipe_values(name: str) -> dict[str, Any]:
    """The recipe's settings as a dict (validated, so a broken recipe says so here)."""
    try:
        return to_dict(load_yaml(TrainConfig, recipe_path(name)))
    except SettingsError as exc:
        raise gr.Error(str(exc)) from exc


def fresh_run_name(base: str) -> str:
    """A run name that will not collide with an earlier run of the same recipe."""
    return f"{base}-{time.strftime('%Y%m%d-%H%M%S')}"


def base_model_name(ctx: AppContext) -> str:
    """The name that loads the app's base model again (the registry shows 'bundled' by its display name)."""
    name = ctx.registry.model_name
    return BUNDLED_NAME if name == BUNDLED_DISPLAY_NAME else name


def _number(name: str, value: Any) -> Any:
    if value is None or value == "":
        raise gr.Error(f"{LABELS.get(name, name)} is empty; give a value.")
    return value


def build_config(ctx: AppContext, recipe: str, model: str, form: dict[str, Any], overrides_text: str,
                 dataset: str = "") -> TrainConfig:
    """Recipe, then the form, then the key=value overrides; output goes under the app's runs folder."""
    values = recipe_values(recipe)
    values.update({name: _number(name, value) for name, value in form.items() if name != "run_name"})
    values["run_name"] = (form.get("run_name") or "").strip() or fresh_run_name(values["run_name"])
    values["model"] = (model or "").strip() or base_model_name(ctx)
    values["dataset"] = dataset
    values["output_dir"] = ""
    lines = [line.strip() for line in (overrides_text or "").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    try:
        values.update(parse_overrides(lines))
        if not values["output_dir"]:
            values["output_dir"] = str(ctx.runs_dir / str(values["run_name"]).strip())
        return from_dict(TrainConfig, values, source="Training settings")
    except SettingsError as exc:
        raise gr.Error(str(exc), title="Check the settings") from exc


# --- data and memory --------------------------------------------------------------------------------------------

def labelled_rows(ctx: AppContext) -> list[dict[str, Any]]:
    """The pairs a run would train on now (what export writes), refusing when there are none."""
    try:
        rows = build_preference_rows(ctx.store)
    except ExportError as exc:
        raise gr.Error(str(exc)) from exc
    if not rows:
        raise gr.Error("No labelled pairs with a clear winner yet, so there is nothing to train on. Label some pairs "
                       "in the Label tab (A or B better), or train on a file.", title="Nothing to train on")
    return [{key: row[key] for key in ("prompt", "chosen", "rejected")} for row in rows]


def export_labelled(ctx: AppContext) -> Path:
    """Write the labelled pairs to data_dir/exports/train-<timestamp>.jsonl (the run's dataset)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = ctx.data_dir / EXPORTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"train-{stamp}.jsonl"
    count = 1
    while path.exists():  # two starts in one second must not share (and overwrite) one file
        count += 1
        path = folder / f"train-{stamp}-{count}.jsonl"
    try:
        export(ctx.store, path)
    except ExportError as exc:
        raise gr.Error(str(exc), title="Nothing to train on") from exc
    return path


def is_local(dataset: str) -> bool:
    return Path(dataset).expanduser().exists() or Path(dataset).suffix in (".jsonl", ".json", ".parquet")


def check_rows(rows: list[dict[str, Any]], config: TrainConfig) -> None:
    """Malformed rows and too few pairs are refused before a run starts, with the engine's own message."""
    try:
        split_rows(rows, config)
    except DatasetError as exc:
        raise gr.Error(str(exc), title="Dataset problem") from exc


def memory_plan(config: TrainConfig, rows: list[dict[str, Any]] | None, budget: str) -> MemoryPlan:
    from transformers import AutoConfig, AutoTokenizer

    from alignment.train import pair_token_counts

    try:
        source = resolve_source(config.model)[0]
        model_config = AutoConfig.from_pretrained(source)
        longest, dataset_tokens = (pair_token_counts(rows, AutoTokenizer.from_pretrained(source), config.max_length)
                                   if rows else (None, None))
        device = config.resolved_device()
        return estimate(model_config, config, parse_size(budget) if (budget or "").strip() else None,
                        device=device, tokens_per_seq=longest, dataset_tokens=dataset_tokens)
    except (ModelLoadError, SettingsError, OSError) as exc:
        raise gr.Error(f"Could not plan memory for {config.model!r}: {str(exc).splitlines()[0]}") from exc


def plan_markdown(plan: MemoryPlan, config: TrainConfig) -> str:
    verdict = "fits" if plan.fits else "**does NOT fit**"
    lines = [f"**Memory plan** for `{config.model}` on {plan.device}: about **{format_size(plan.total_bytes)}** of "
             f"{format_size(plan.budget_bytes)}, {verdict}. Effective batch {config.effective_batch_size}, "
             f"max length {config.max_length}.", "", "| part | estimate |", "|---|---|"]
    lines += [f"| {name.replace('_', ' ')}{' (shared)' if name in plan.shared else ''} | {format_size(size)} |"
              for name, size in plan.parts.items()]
    if plan.shared:
        lines += ["", plan.shared_note()]
    if "reference_precompute" in plan.parts:
        lines += ["", plan.precompute_note()]
    if plan.suggestion:
        lines += ["", plan.suggestion, "", "Tick *Start even if it does not fit* to try anyway."]
    return "\n".join(lines)


# --- status and charts ------------------------------------------------------------------------------------------

def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else (
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s")


def progress_markdown(status: dict[str, Any]) -> str:
    step, total = status["step"], status["max_steps"]
    if not status["run_name"]:
        return "No run yet."
    share = step / total if total else 0.0
    filled = int(round(share * BAR_WIDTH))
    bar = "█" * filled + "░" * (BAR_WIDTH - filled)
    left = "done" if status["state"] == "finished" else f"{_duration(status['eta'])} left"
    return (f"`{bar}` **{step}/{total or '?'}** steps ({share:.0%}) · epoch {status['epoch']:.2f} · "
            f"elapsed {_duration(status['elapsed'])} · {left}")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def status_markdown(status: dict[str, Any]) -> str:
    state = status["state"]
    if not status["run_name"]:
        return "**No training run yet.** Pick a recipe, check the memory plan, then Start."
    head = f"**Run `{status['run_name']}`: {state}**"
    if state in ("running", "cancelling") and status["phase"]:
        head += f" ({status['phase']})"
    lines = [head]
    last = status["last_metrics"]
    if "loss" in last:
        lines.append(f"Last step: loss {_fmt(last['loss'])}, reward margin {_fmt(last.get('rewards/margins', '?'))}, "
                     f"reward accuracy {_fmt(last.get('rewards/accuracies', '?'))}.")
    if state == "failed":
        lines.append(f"**Failed:** {status['error']}")
    if state == "cancelled":
        lines.append(f"Cancelled at step {status['step']}/{status['max_steps']}; a checkpoint was saved. Press "
                     "**Resume** to continue it.")
    if status["output_dir"]:
        lines.append(f"Output folder: `{status['output_dir']}`")
    if state == "finished":
        if status["adapter_dir"]:
            lines.append(f"Adapter: `{status['adapter_dir']}`. Press **Load as aligned model** to use it in the "
                         "other tabs.")
        if status.get("gate"):
            lines.append(f"With a {status['gate']['summary']}: the adapter answers what the gate flags as harmful, "
                         "the base model the rest.")
        if status.get("gate_note"):
            lines.append(f"**No refusal gate:** {status['gate_note']}")
        merged = Path(status["output_dir"] or "") / "merged"
        if status["output_dir"] and merged.is_dir():
            lines.append(f"Merged weights: `{merged}`")
        final = _final_metrics(status)
        if final:
            lines.append("\n".join(["| final metric | value |", "|---|---|",
                                     *[f"| {k} | {_fmt(v)} |" for k, v in final.items()]]))
    return "\n\n".join(lines)


def _final_metrics(status: dict[str, Any]) -> dict[str, Any]:
    keys = ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected")
    history = status["history"]
    train_log = next((r for r in reversed(history) if "loss" in r), {})
    eval_log = next((r for r in reversed(history) if any(k.startswith("eval_") for k in r)), {})
    found = {k: train_log[k] for k in keys if k in train_log}
    found.update({k: eval_log[k] for k in (f"eval_{k}" for k in keys) if k in eval_log})
    return found


def chart_frame(history: list[dict[str, Any]], series: dict[str, str]):
    """Long-format frame (step, value, series) of the training log lines, for gr.LinePlot."""
    import pandas as pd

    points = [(int(record["step"]), float(record[key]), name)
              for record in history if "loss" in record and not any(k.startswith("eval_") for k in record)
              for key, name in series.items() if isinstance(record.get(key), (int, float))]
    steps, values, names = zip(*points, strict=True) if points else ((), (), ())
    # Explicit dtypes, so an empty frame still has numeric columns.
    return pd.DataFrame({"step": pd.Series(steps, dtype="int64"), "value": pd.Series(values, dtype="float64"),
                         "series": pd.Series(names, dtype="str")})


def status_details(status: dict[str, Any]) -> dict[str, Any]:
    """The status as JSON for the raw view and API clients; the history is summarised (the charts show it)."""
    details = {k: v for k, v in status.items() if k != "history"}
    details["history_rows"] = sum(1 for r in status["history"] if "loss" in r)
    details["history_steps"] = [int(r["step"]) for r in status["history"] if "loss" in r]
    return details


# --- finished runs ----------------------------------------------------------------------------------------------

def run_table(runs: list[dict[str, Any]]) -> list[list[Any]]:
    def metric(values: dict[str, Any], key: str) -> str:
        return _fmt(values[key]) if key in values else ""

    return [[r["run_name"], r["global_step"], metric(r["metrics"], "loss"), metric(r["metrics"], "rewards/accuracies"),
             metric(r["eval_metrics"], "eval_rewards/accuracies"), r["base_model"] or "", r["dataset"] or "",
             r["adapter_dir"]] for r in runs]


def run_choices(runs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(f"{r['run_name']} ({r['global_step']} steps)", r["adapter_dir"]) for r in runs]


def build(ctx: AppContext, demo: gr.Blocks) -> None:
    recipes = recipe_names()
    first = DEFAULT_RECIPE if DEFAULT_RECIPE in recipes else (recipes[0] if recipes else None)
    start_values = recipe_values(first) if first else to_dict(TrainConfig())
    help_ = {f: TrainConfig.__dataclass_fields__[f].metadata.get("help", "") for f in FORM_FIELDS}
    seen = gr.State(None)

    gr.Markdown("Train the loaded model with DPO on the preference pairs. Starting, cancelling, loading and pushing "
                "are for admins; labelers can keep labelling while a run trains.")
    with gr.Row():
        recipe = gr.Dropdown(choices=recipes, value=first, label="Recipe", scale=1,
                             info="Fills the settings below; settings not shown come from the recipe.")
        model = gr.Textbox(value=base_model_name(ctx), label="Base model", scale=2, max_length=300,
                           info="The app's loaded model by default, so the adapter loads onto it without a restart.")
    with gr.Row():
        source = gr.Radio(choices=list(SOURCES), value=SOURCES[0], label="Training data", scale=1)
        dataset = gr.Textbox(label="File or Hub dataset (when not using the labelled pairs)", scale=2, max_length=500,
                             placeholder="data/exports/prefs.jsonl or owner/name")
    fields: dict[str, Any] = {}
    with gr.Accordion("Settings", open=True):
        with gr.Row():
            fields["run_name"] = gr.Textbox(value=fresh_run_name(start_values["run_name"]), label=LABELS["run_name"],
                                            max_length=100, info=help_["run_name"])
            for name in ("beta", "learning_rate", "warmup"):
                fields[name] = gr.Number(value=start_values[name], label=LABELS[name], info=help_[name])
        with gr.Row():
            for name in ("num_train_epochs", "max_steps", "per_device_train_batch_size",
                         "gradient_accumulation_steps"):
                fields[name] = gr.Number(value=start_values[name], label=LABELS[name], info=help_[name],
                                         precision=None if name == "num_train_epochs" else 0)
        with gr.Row():
            for name in ("max_length", "lora_r", "lora_alpha", "seed"):
                fields[name] = gr.Number(value=start_values[name], label=LABELS[name], info=help_[name], precision=0)
        with gr.Row():
            fields["eval_split"] = gr.Number(value=start_values["eval_split"], label=LABELS["eval_split"],
                                             info=help_["eval_split"])
            fields["save_steps"] = gr.Number(value=start_values["save_steps"], label=LABELS["save_steps"],
                                             info=help_["save_steps"], precision=0)
            fields["merge_after"] = gr.Checkbox(value=start_values["merge_after"], label=LABELS["merge_after"],
                                                info=help_["merge_after"])
            fields["refusal_gate"] = gr.Checkbox(value=start_values["refusal_gate"], label=LABELS["refusal_gate"],
                                                 info=help_["refusal_gate"])
        overrides = gr.Textbox(label="Advanced: key=value overrides, one a line", lines=3, max_length=4000,
                               placeholder="loss_type=ipo\ngradient_checkpointing=true\ndevice=cpu",
                               info="Any recipe setting (see docs/TRAINING.md); applied last.")
    with gr.Row():
        budget = gr.Textbox(label="Memory budget (blank = this device's)", placeholder="e.g. 15GB", max_length=40,
                            scale=1)
        force = gr.Checkbox(value=False, label="Start even if it does not fit", scale=1)
        plan_btn = gr.Button("Check memory plan", scale=1)
    plan_md = gr.Markdown()
    with gr.Row():
        start_btn = gr.Button("Start training", variant="primary")
        cancel_btn = gr.Button("Cancel", variant="stop")
        resume_btn = gr.Button("Resume (run name above)")
        refresh_btn = gr.Button("Refresh status", size="sm")
    progress_md = gr.Markdown("No run yet.")
    status_md = gr.Markdown()
    with gr.Row():
        load_current_btn = gr.Button("Load as aligned model", size="sm", scale=1)
        # The answer sits next to the button: a message far below in "Finished runs" looked like nothing happened.
        load_current_md = gr.Markdown(scale=4)
    plots = []
    with gr.Row():
        for title, _ in CHARTS[:3]:
            plots.append(gr.LinePlot(x="step", y="value", color="series", title=title, label=title, height=240))
    with gr.Row():
        for title, _ in CHARTS[3:]:
            plots.append(gr.LinePlot(x="step", y="value", color="series", title=title, label=title, height=240))
    with gr.Accordion("Raw status", open=False):
        details = gr.JSON(label="Status")

    with gr.Accordion("Finished runs", open=True):
        runs_table = gr.Dataframe(headers=RUN_COLUMNS, value=run_table(ctx.training.list_adapters(ctx.runs_dir)),
                                  interactive=False, wrap=True, max_height=300)
        with gr.Row():
            adapter_pick = gr.Dropdown(choices=run_choices(ctx.training.list_adapters(ctx.runs_dir)),
                                       label="Adapter", scale=3, allow_custom_value=True)
            runs_btn = gr.Button("Refresh list", size="sm", scale=1)
            load_btn = gr.Button("Load as model side", scale=1)
        with gr.Row():
            repo = gr.Textbox(label="Hub model repo", placeholder="owner/name", max_length=200, scale=3)
            private = gr.Checkbox(value=True, label="Private", scale=1)
            push_btn = gr.Button("Push adapter to the Hub", scale=1)
        runs_md = gr.Markdown()
    # Ticks only while a run is active (Start, Resume or a page load during a run switch it on), so idle pages and
    # labelers' browsers do not poll.
    timer = gr.Timer(POLL_SECONDS, active=False)

    form_inputs = [fields[name] for name in FORM_FIELDS]

    # --- handlers -----------------------------------------------------------------------------------------------

    def fill_from_recipe(name: str) -> tuple[Any, ...]:
        values = recipe_values(name)
        return (fresh_run_name(values["run_name"]), *[values[f] for f in FORM_FIELDS[1:]])

    def plan(recipe_name: str, model_name: str, source_name: str, dataset_name: str, overrides_text: str,
             budget_text: str,
             run_name: str, beta: float, learning_rate: float, num_train_epochs: float, max_steps: float,
             per_device_train_batch_size: float, gradient_accumulation_steps: float, max_length: float,
             lora_r: float, lora_alpha: float, warmup: float, seed: float, eval_split: float, save_steps: float,
             merge_after: bool, refusal_gate: bool) -> str:
        form = {name: value for name, value in locals().items() if name in FORM_FIELDS}
        config = build_config(ctx, recipe_name, model_name, form, overrides_text, dataset_name or "")
        rows = _rows_for_plan(source_name, dataset_name)
        return plan_markdown(memory_plan(config, rows, budget_text), config)

    def _rows_for_plan(source_name: str, dataset_name: str) -> list[dict[str, Any]] | None:
        if source_name == SOURCES[0]:
            return labelled_rows(ctx)
        name = (dataset_name or "").strip()
        if name and is_local(name):
            try:
                return load_preference_rows(name)
            except DatasetError as exc:
                raise gr.Error(str(exc), title="Dataset problem") from exc
        return None  # a Hub dataset is only fetched by the run itself

    def refuse_if_running() -> None:
        status = ctx.training.status()
        if status["state"] in ("running", "cancelling"):
            where = f"step {status['step']}/{status['max_steps']}" if status["max_steps"] else (
                status["phase"] or "starting")
            raise gr.Error(f"run {status['run_name']} is at {where}; cancel it or wait for it to finish before "
                           "starting another.", title="A run is in progress")

    def launch(config: TrainConfig, budget_text: str, force_start: bool, resume: bool) -> None:
        try:
            ctx.training.start(config, memory_budget=(budget_text or "").strip() or None, force=bool(force_start),
                               resume=resume)
        except RunBusy as exc:
            raise gr.Error(str(exc), title="A run is in progress") from exc
        except SettingsError as exc:
            raise gr.Error(str(exc)) from exc

    def start(recipe_name: str, model_name: str, source_name: str, dataset_name: str, overrides_text: str,
              budget_text: str, force_start: bool,
              run_name: str, beta: float, learning_rate: float, num_train_epochs: float, max_steps: float,
              per_device_train_batch_size: float, gradient_accumulation_steps: float, max_length: float,
              lora_r: float, lora_alpha: float, warmup: float, seed: float, eval_split: float, save_steps: float,
              merge_after: bool, refusal_gate: bool,
              request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple[Any, ...]:
        form = {name: value for name, value in locals().items() if name in FORM_FIELDS}
        require_admin(ctx, request, profile, "start training")
        refuse_if_running()
        config = build_config(ctx, recipe_name, model_name, form, overrides_text)
        if latest_checkpoint(config) or (config.adapter_dir / "adapter_config.json").is_file():
            raise gr.Error(f"Run '{config.run_name}' already exists in {config.output_dir}. Press Resume to continue "
                           "it, or change the run name to start a new run.", title="Run name taken")
        labelled = source_name == SOURCES[0]
        if labelled:
            rows = labelled_rows(ctx)
            data_path = ""
        else:
            data_path = (dataset_name or "").strip()
            if not data_path:
                raise gr.Error("Give a .jsonl / .parquet file or a Hub dataset id (owner/name), or train on the "
                               "labelled pairs in this app.")
            rows = None
            if is_local(data_path):
                try:
                    rows = load_preference_rows(data_path)
                except DatasetError as exc:
                    raise gr.Error(str(exc), title="Dataset problem") from exc
        if rows is not None:
            check_rows(rows, config)
        memory = memory_plan(config, rows, budget_text)
        if not memory.fits and not force_start:
            raise gr.Error(f"This run needs about {format_size(memory.total_bytes)} but {memory.device} has "
                           f"{format_size(memory.budget_bytes)}. {memory.suggestion} Or tick 'Start even if it does "
                           "not fit'.", title="Will not fit in memory")
        # Export only once the run will start, so refused starts leave no files behind.
        if labelled:
            data_path = str(export_labelled(ctx))
        config = build_config(ctx, recipe_name, model_name, form, overrides_text, data_path)
        launch(config, budget_text, force_start, resume=False)
        gr.Info(f"Training {config.run_name} started on {len(rows) if rows else 'the'} pairs.")
        return plan_markdown(memory, config), *poll_texts(), gr.Timer(active=True)

    def resume(run_name: str, budget_text: str, force_start: bool, request: gr.Request,
               profile: gr.OAuthProfile | None = None) -> tuple[Any, ...]:
        require_admin(ctx, request, profile, "resume training")
        refuse_if_running()
        name = (run_name or "").strip()
        folder = ctx.runs_dir / name
        saved = folder / "config.yaml"
        if not name or not saved.is_file():
            raise gr.Error(f"There is no run '{name}' to resume in {ctx.runs_dir} (it has no config.yaml yet). "
                           "Put the run's name in 'Run name', or press Start.", title="Nothing to resume")
        try:
            config = load_yaml(TrainConfig, saved, [f"output_dir={folder}"])
        except SettingsError as exc:
            raise gr.Error(str(exc)) from exc
        if (config.adapter_dir / "adapter_config.json").is_file():
            raise gr.Error(f"Run '{name}' already finished; its adapter is in {config.adapter_dir}.",
                           title="Nothing to resume")
        if not latest_checkpoint(config):
            raise gr.Error(f"Run '{name}' has no checkpoint yet, so there is nothing to resume; press Start (with a "
                           "new run name) to train from the beginning.", title="Nothing to resume")
        launch(config, budget_text, force_start, resume=True)
        gr.Info(f"Resuming {name} from {Path(latest_checkpoint(config)).name}.")
        return *poll_texts(), gr.Timer(active=True)

    def cancel(request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple[str, str]:
        require_admin(ctx, request, profile, "cancel training")
        if ctx.training.cancel():
            gr.Info("Cancelling: the run stops after the current step and saves a checkpoint. Resume continues it.")
        else:
            gr.Info("No run is in progress.")
        return poll_texts()

    def poll_texts() -> tuple[str, str]:
        status = ctx.training.status()
        return progress_markdown(status), status_markdown(status)

    def poll(last: tuple | None, full: bool = False) -> tuple[Any, ...]:
        status = ctx.training.status()
        key = (status["run_name"], status["state"], status["step"], len(status["history"]), status["phase"])
        if not full and key == last:
            return (last, *([gr.skip()] * (len(poll_outputs) - 1)))
        if not full and last is not None and status["state"] == "failed" and last[:2] != key[:2]:
            gr.Warning(f"Training {status['run_name']} failed: {status['error']}")
        # No data is sent as None, never as an empty frame: a LinePlot (gradio 6.31) that once got an empty frame
        # draws no lines for later data.
        plot_values = [frame if len(frame) else None
                       for frame in (chart_frame(status["history"], series) for _, series in CHARTS)]
        finished_now = status["state"] == "finished" and (full or last is None or last[1] != "finished"
                                                           or last[0] != key[0])
        if finished_now:
            runs = ctx.training.list_adapters(ctx.runs_dir)
            table, pick = run_table(runs), gr.update(choices=run_choices(runs), value=status["adapter_dir"])
        else:
            table, pick = gr.skip(), gr.skip()
        return (key, progress_markdown(status), status_markdown(status), status_details(status), *plot_values,
                table, pick, gr.Timer(active=status["state"] in ("running", "cancelling")))

    # No message box among the timer's outputs: a tick landing while Load or Push answered could hide their message.
    poll_outputs = [seen, progress_md, status_md, details, *plots, runs_table, adapter_pick, timer]

    def refresh_runs() -> tuple[Any, Any]:
        runs = ctx.training.list_adapters(ctx.runs_dir)
        return run_table(runs), gr.update(choices=run_choices(runs))

    def load_adapter(path: str, request: gr.Request, profile: gr.OAuthProfile | None = None) -> str:
        require_admin(ctx, request, profile, "load an adapter")
        path = (path or "").strip()
        if not path:
            raise gr.Error("Pick a finished run's adapter first.")
        known = {r["adapter_dir"]: r for r in ctx.training.list_adapters(ctx.runs_dir)}
        run = known.get(path)
        if run is None and not (Path(path) / "adapter_config.json").is_file():
            raise gr.Error(f"{path} is not the adapter folder of a finished run (no adapter_config.json). Pick one "
                           "from the list.")
        name = run["run_name"] if run else None
        try:
            loaded_name = ctx.registry.load_adapter(path, name=name)
        except (ModelLoadError, SettingsError) as exc:
            raise gr.Error(str(exc), title="Could not load the adapter") from exc
        gate = ctx.registry.gate(loaded_name)
        gated = f" {gate.explain(ctx.registry.loaded.quantized_4bit)}" if gate else ""
        return (f"Loaded adapter **{loaded_name}** onto the base model. Pick `{loaded_name}` as the model side in the "
                f"Playground (press *Refresh model facts*) and the other tabs; no restart needed.{gated}")

    def load_current(request: gr.Request, profile: gr.OAuthProfile | None = None) -> str:
        status = ctx.training.status()
        if status["state"] != "finished" or not status["adapter_dir"]:
            raise gr.Error("The current run has not finished, so it has no adapter yet. Wait for it, or pick a "
                           "finished run under 'Finished runs'.")
        return load_adapter(status["adapter_dir"], request, profile)

    def push(path: str, repo_id: str, is_private: bool, request: gr.Request,
             oauth_token: gr.OAuthToken | None = None, profile: gr.OAuthProfile | None = None) -> str:
        require_admin(ctx, request, profile, "push an adapter to the Hub")
        if not (path or "").strip():
            raise gr.Error("Pick a finished run's adapter first.")
        try:
            url = push_adapter(path.strip(), repo_id, token=oauth_token.token if oauth_token else None,
                               private=bool(is_private))
        except HubError as exc:
            raise gr.Error(str(exc), title="Push failed") from exc
        return f"Pushed the adapter to {url} ({'private' if is_private else 'public'})."

    def on_load() -> tuple[Any, ...]:
        runs = ctx.training.list_adapters(ctx.runs_dir)
        polled = list(poll(None, full=True))
        polled[poll_outputs.index(runs_table)] = run_table(runs)
        if ctx.training.status()["state"] != "finished":  # a finished run's poll already picks its adapter
            polled[poll_outputs.index(adapter_pick)] = gr.update(choices=run_choices(runs))
        name = fresh_run_name(recipe_values(first)["run_name"]) if first else gr.skip()
        return name, base_model_name(ctx), *polled

    # --- wiring -------------------------------------------------------------------------------------------------

    head_inputs = [recipe, model, source, dataset, overrides, budget]
    recipe.change(fill_from_recipe, [recipe], form_inputs, api_name="train_recipe")
    plan_btn.click(plan, head_inputs + form_inputs, [plan_md], api_name="train_plan")
    start_btn.click(start, head_inputs + [force] + form_inputs, [plan_md, progress_md, status_md, timer],
                    api_name="train_start")
    cancel_btn.click(cancel, None, [progress_md, status_md], api_name="train_cancel", concurrency_limit=None)
    resume_btn.click(resume, [fields["run_name"], budget, force], [progress_md, status_md, timer],
                     api_name="train_resume")
    # Polling is a cheap read of the manager's status: never queue it behind generation.
    refresh_btn.click(lambda last: poll(last, full=True), [seen], poll_outputs, api_name="train_status",
                      concurrency_limit=None)
    timer.tick(poll, [seen], poll_outputs, api_name=False, concurrency_limit=None, show_progress="hidden")
    runs_btn.click(refresh_runs, None, [runs_table, adapter_pick], api_name="train_runs", concurrency_limit=None)
    load_btn.click(load_adapter, [adapter_pick], [runs_md], api_name="train_load_adapter")
    load_current_btn.click(load_current, None, [load_current_md], api_name="train_load_current")
    push_btn.click(push, [adapter_pick, repo, private], [runs_md], api_name="train_push_adapter")
    demo.load(on_load, None, [fields["run_name"], model, *poll_outputs], api_name=False)
