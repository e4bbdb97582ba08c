"""Dataset tab: labeling progress, the quality report, browsing the exported preference rows and the raw pairs
with filters, export to .jsonl / .parquet, and push to / pull from the Hugging Face Hub.

Prompts, responses, categories and labeler names are untrusted text: they are shown in Dataframes and plain
Textboxes, never as Markdown or HTML. Push and pull are admin-only (checked in the handler); the Hub token comes
from the signed-in Space user, ``HF_TOKEN`` or the login cache and is never shown. Every action is an API
endpoint (``/dataset_refresh``, ``/dataset_browse``, ``/dataset_row``, ``/dataset_export_jsonl``,
``/dataset_push``, ``/dataset_pull`` ...) for gradio_client tests.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import gradio as gr

from labeling.export import ExportError, build_rows_with_reasons, export, resolve_pair
from labeling.hub import HubError, pull_dataset, push_dataset, read_status
from labeling.quality import format_quality_summary, quality_report
from labeling.records import prompt_text
from labeling.store import LabelError
from ui.context import AppContext
from ui.generate import PROMPT_FILES_DIR
from ui.identity import require_admin

EXPORTS_DIR = "exports"
VIEWS = ("preference rows", "raw pairs")
RESOLUTIONS = ("majority", "rewrite", "tie", "both_bad", "split", "unlabeled", "too_few_votes")
MAX_TABLE_ROWS = 2000
PREVIEW_CHARS = 160
ROW_COLUMNS = ["pair_id", "category", "intended_label", "resolution", "labelers", "agreement", "prompt", "chosen",
               "rejected"]
PAIR_COLUMNS = ["pair_id", "category", "intended_label", "strategy", "resolution", "labelers", "choices", "prompt",
                "response_a", "response_b"]


def _content(messages: list[dict[str, str]]) -> str:
    return messages[-1].get("content", "") if messages else ""


def _short(text: str) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS - 1] + "…"


def preference_records(store: Any, min_votes: int = 1) -> list[dict[str, Any]]:
    """Exported rows as flat records with the full texts (for the table and the row picker)."""
    rows, _ = build_rows_with_reasons(store, min_votes=min_votes)
    return [{"pair_id": row["pair_id"], "category": row["category"] or "", "intended_label":
             row["intended_label"] or "unknown", "resolution": row["resolution"], "labelers": row["labelers"],
             "agreement": round(row["agreement"], 2), "prompt": prompt_text(row["prompt"]),
             "first": _content(row["chosen"]), "second": _content(row["rejected"])} for row in rows]


def pair_records(store: Any, min_votes: int = 1) -> list[dict[str, Any]]:
    """Every stored pair with its active labels and how export resolves it."""
    by_pair: dict[str, list[Any]] = {}
    for label in store.active_labels(kind="label"):
        by_pair.setdefault(label.pair_id, []).append(label)
    records = []
    for pair in store.list_pairs():
        labels = by_pair.get(pair.pair_id, [])
        latest = {label.labeler: label.choice for label in labels}
        if not labels:
            resolution = "unlabeled"
        elif len(latest) < min_votes:
            resolution = "too_few_votes"
        else:
            row, reason = resolve_pair(pair, labels)
            resolution = row["resolution"] if row else reason
        choices = Counter(latest.values())
        records.append({"pair_id": pair.pair_id, "category": pair.category or "", "intended_label":
                        pair.intended_label or "unknown", "strategy": pair.strategy, "resolution": resolution,
                        "labelers": sorted(latest), "choices": ", ".join(f"{c} {n}" for c, n in sorted(choices.items())),
                        "prompt": pair.prompt_text, "first": pair.response_a, "second": pair.response_b})
    return records


def filter_records(records: list[dict[str, Any]], category: str = "", intended_label: str = "", labeler: str = "",
                   resolution: str = "", search: str = "") -> list[dict[str, Any]]:
    """Records matching every filter that is set; ``search`` looks in the prompt and both responses."""
    needle = (search or "").strip().casefold()
    kept = []
    for record in records:
        if category and record["category"] != category:
            continue
        if intended_label and record["intended_label"] != intended_label:
            continue
        if labeler and labeler not in record["labelers"]:
            continue
        if resolution and record["resolution"] != resolution:
            continue
        if needle and not any(needle in record[key].casefold() for key in ("prompt", "first", "second")):
            continue
        kept.append(record)
    return kept


def table_rows(view: str, records: list[dict[str, Any]]) -> list[list[Any]]:
    if view == VIEWS[0]:
        return [[r["pair_id"], r["category"], r["intended_label"], r["resolution"], ", ".join(r["labelers"]),
                 r["agreement"], _short(r["prompt"]), _short(r["first"]), _short(r["second"])] for r in records]
    return [[r["pair_id"], r["category"], r["intended_label"], r["strategy"], r["resolution"],
             ", ".join(r["labelers"]), r["choices"], _short(r["prompt"]), _short(r["first"]), _short(r["second"])]
            for r in records]


def key_numbers(store: Any, report: dict[str, Any], left_out: Counter) -> list[list[Any]]:
    progress = store.progress()
    agreement = report["agreement"]
    bias = report["position_bias"]
    rows = [
        ["pairs", progress["pairs"]],
        ["labels (active)", progress["everyone"]],
        ["labelers", progress["labelers"]],
        ["pairs still short of labels", progress["remaining"]],
        ["exported rows", report["rows"]],
        *[[f"left out: {why.replace('_', ' ')}", n] for why, n in sorted(left_out.items()) if why != "exported"],
        ["pairs labeled by 2+ people", agreement["pairs_with_overlap"]],
        ["percent agreement", "n/a" if agreement["percent_agreement"] is None
         else f"{agreement['percent_agreement']:.0%}"],
        [f"{agreement['method'] or 'kappa'} kappa", "n/a" if agreement["kappa"] is None
         else f"{agreement['kappa']:.2f}"],
        ["left side picked (A/B votes)", "n/a" if bias["share_left"] is None else f"{bias['share_left']:.0%}"],
        ["chosen is the longer answer", "n/a" if report["chosen_longer"]["share"] is None
         else f"{report['chosen_longer']['share']:.0%}"],
        ["identical chosen and rejected", report["identical_chosen_rejected"]],
        ["warnings", len(report["warnings"])],
    ]
    rows += [[f"labels by {name}", count] for name, count in sorted(progress["per_labeler"].items())]
    return [[name, str(value)] for name, value in rows]


def _min_votes(value: Any) -> int:
    try:
        number = int(value) if value not in (None, "") else 1
    except (TypeError, ValueError):
        raise gr.Error(f"Minimum labelers per pair must be a whole number, got {value!r}.") from None
    if number < 1:
        raise gr.Error("Minimum labelers per pair must be at least 1.")
    return number


def servable(path: Path) -> str:
    """A path gradio may serve: files outside the working folder and the temp folder are copied to the latter."""
    resolved = path.resolve()
    for root in (Path.cwd().resolve(), Path(tempfile.gettempdir()).resolve()):
        if resolved.is_relative_to(root):
            return str(resolved)
    copy = Path(tempfile.mkdtemp(prefix="align-export-")) / path.name
    shutil.copyfile(path, copy)
    return str(copy)


def _safe_name(repo_id: str) -> str:
    return repo_id.replace("/", "__")


def _token(oauth_token: gr.OAuthToken | None) -> str | None:
    return oauth_token.token if oauth_token is not None else None


def build(ctx: AppContext, demo: gr.Blocks) -> None:
    matches = gr.State([])

    with gr.Row():
        refresh = gr.Button("Refresh progress and quality", variant="primary", scale=1)
        min_votes = gr.Number(value=1, precision=0, minimum=1, label="Minimum labelers per pair", scale=1,
                              info="Pairs with fewer distinct labelers are left out of the export.")
    with gr.Row():
        numbers = gr.Dataframe(headers=["measure", "value"], value=[], label="Key numbers", interactive=False,
                               max_height=360)
        summary = gr.Textbox(label="Quality report", interactive=False, lines=10, max_lines=30)

    with gr.Accordion("Browse", open=True):
        with gr.Row():
            view = gr.Radio(choices=list(VIEWS), value=VIEWS[0], label="Show")
            category = gr.Dropdown(choices=[""], value="", label="Category", allow_custom_value=True)
            intended = gr.Dropdown(choices=["", "benign", "harmful", "unknown"], value="", label="Intended label")
            labeler = gr.Dropdown(choices=[""], value="", label="Labeler", allow_custom_value=True)
            resolution = gr.Dropdown(choices=["", *RESOLUTIONS], value="", label="Resolution")
        with gr.Row():
            search = gr.Textbox(label="Search text", placeholder="words in the prompt or a response", max_length=200,
                                scale=3)
            browse = gr.Button("Show", scale=1)
        browse_status = gr.Textbox(label="Matches", interactive=False, lines=1)
        table = gr.Dataframe(headers=ROW_COLUMNS, value=[], interactive=False, wrap=True, max_height=400)
        with gr.Row():
            row_number = gr.Number(value=1, precision=0, minimum=1, label="Row to show in full (1 = first)", scale=1)
            show_row = gr.Button("Show row", scale=1)
        row_prompt = gr.Textbox(label="Prompt", interactive=False, lines=3, max_lines=12)
        with gr.Row(equal_height=True):
            row_first = gr.Textbox(label="Chosen / A", interactive=False, lines=8, max_lines=30)
            row_second = gr.Textbox(label="Rejected / B", interactive=False, lines=8, max_lines=30)

    with gr.Accordion("Export", open=True):
        with gr.Row():
            export_jsonl = gr.Button("Export .jsonl")
            export_parquet = gr.Button("Export .parquet")
        export_message = gr.Textbox(label="Export result", interactive=False, lines=2)
        export_file = gr.File(label="Download", interactive=False)

    with gr.Accordion("Hugging Face Hub (admins)", open=False):
        with gr.Row():
            repo = gr.Textbox(value=ctx.hub_repo or "", label="Dataset repo", placeholder="owner/name",
                              max_length=200, scale=3)
            private = gr.Checkbox(value=True, label="Private", scale=1)
            push = gr.Button("Push", variant="primary", scale=1)
        hub_status = gr.Textbox(label="Push status", interactive=False, lines=2)
        with gr.Row():
            pull_repo = gr.Textbox(label="Pull a dataset", placeholder="owner/name", max_length=200, scale=3)
            pull = gr.Button("Pull", scale=1)
        pull_message = gr.Textbox(label="Pull result", interactive=False, lines=2)
        pull_file = gr.File(label="Pulled file", interactive=False)

    def refresh_all(votes: Any) -> tuple[Any, ...]:
        try:
            rows, reasons = build_rows_with_reasons(ctx.store, min_votes=_min_votes(votes))
            report = quality_report(rows, ctx.store.active_labels(kind="label"))
        except (ExportError, LabelError) as exc:
            raise gr.Error(str(exc)) from exc
        pairs = ctx.store.list_pairs()
        categories = ["", *sorted({p.category for p in pairs if p.category})]
        labelers = ["", *sorted(ctx.store.progress()["per_labeler"])]
        return (key_numbers(ctx.store, report, reasons), format_quality_summary(report),
                gr.update(choices=categories), gr.update(choices=labelers), read_status(ctx.data_dir).describe())

    def browse_records(view_name: str, votes: Any, cat: str, label: str, who: str, how: str,
                       text: str) -> tuple[Any, ...]:
        if view_name not in VIEWS:
            raise gr.Error(f"Show one of: {', '.join(VIEWS)}.")
        try:
            source = (preference_records if view_name == VIEWS[0] else pair_records)(ctx.store, _min_votes(votes))
        except (ExportError, LabelError) as exc:
            raise gr.Error(str(exc)) from exc
        found = filter_records(source, cat or "", label or "", who or "", how or "", text or "")
        shown = found[:MAX_TABLE_ROWS]
        note = f"{len(found)} of {len(source)} {view_name} match" + (
            f"; the first {MAX_TABLE_ROWS} are shown" if len(found) > MAX_TABLE_ROWS else "")
        headers = ROW_COLUMNS if view_name == VIEWS[0] else PAIR_COLUMNS
        first, second = ("Chosen", "Rejected") if view_name == VIEWS[0] else ("Response A", "Response B")
        state = [{"prompt": r["prompt"], "first": r["first"], "second": r["second"]} for r in shown]
        import pandas as pd

        frame = pd.DataFrame(table_rows(view_name, shown), columns=headers)
        return (state, frame, note,
                gr.update(label=first, value=""), gr.update(label=second, value=""), "")

    def row_texts(state: list[dict] | None, number: Any) -> tuple[str, str, str]:
        state = state or []
        if not state:
            raise gr.Error("Nothing listed: press 'Show' first (or loosen the filters).")
        try:
            index = int(number) - 1
        except (TypeError, ValueError):
            raise gr.Error(f"Row must be a whole number, got {number!r}.") from None
        if not 0 <= index < len(state):
            raise gr.Error(f"Row {number} does not exist: pick 1 to {len(state)}.")
        record = state[index]
        return record["prompt"], record["first"], record["second"]

    def on_select(state: list[dict] | None, event: gr.SelectData) -> tuple[Any, ...]:
        index = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
        return (index + 1, *row_texts(state, index + 1))

    def export_as(suffix: str, votes: Any) -> tuple[Any, str]:
        folder = ctx.data_dir / EXPORTS_DIR
        path = folder / f"preferences-{time.strftime('%Y%m%d-%H%M%S')}{suffix}"
        try:
            count, report = export(ctx.store, path, min_votes=_min_votes(votes))
        except (ExportError, LabelError) as exc:
            raise gr.Error(str(exc)) from exc
        left = report.get("left_out") or {}
        left_text = ("; left out " + ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in sorted(left.items()))
                     if left else "")
        return servable(path), f"Exported {count} preference rows to {path}{left_text}."

    def export_handler(suffix: str):
        # Admin-only: an export holds every label, rewrite and labeler name, which a public link must not hand out.
        def handler(votes: Any, request: gr.Request) -> tuple[Any, str]:
            require_admin(ctx, request, action="export the labelled dataset")
            return export_as(suffix, votes)
        return handler

    def push_to_hub(repo_id: str, is_private: bool, request: gr.Request,
                    oauth_token: gr.OAuthToken | None = None) -> str:
        require_admin(ctx, request, action="push the dataset to the Hub")
        repo_id = (repo_id or "").strip()
        if not repo_id:
            raise gr.Error("Type the dataset repo to push to, as owner/name.")
        sync = ctx.services.get("hub_sync")
        # Sharing the running sync's event log keeps one raw event file per process, as the sync expects.
        log = sync.log if sync is not None and getattr(sync, "repo_id", None) == repo_id else None
        try:
            result = push_dataset(ctx.store, repo_id, token=_token(oauth_token), private=bool(is_private),
                                  event_log=log)
        except HubError as exc:
            if exc.pending:
                gr.Warning(exc.message)
                return read_status(ctx.data_dir).describe()
            raise gr.Error(exc.message) from None
        return f"Pushed {result.rows} preference rows to {result.repo_id}: {result.commit_message}"

    def pull_from_hub(repo_id: str, request: gr.Request,
                      oauth_token: gr.OAuthToken | None = None) -> tuple[Any, str]:
        require_admin(ctx, request, action="pull datasets from the Hub")
        repo_id = (repo_id or "").strip()
        if not repo_id:
            raise gr.Error("Type the dataset to pull, as owner/name.")
        try:
            pulled = pull_dataset(repo_id, token=_token(oauth_token), cache_dir=ctx.data_dir / "hub" / "cache")
        except HubError as exc:
            raise gr.Error(exc.message) from None
        if pulled.kind == "preference":
            path = ctx.data_dir / EXPORTS_DIR / f"pulled-{_safe_name(repo_id)}.jsonl"
            from labeling.export import write_rows

            write_rows([dict(row) for row in pulled.dataset], path)
            return servable(path), (f"Pulled {len(pulled.dataset)} preference rows from {repo_id} into {path}.")
        if not pulled.prompts:
            raise gr.Error(f"{repo_id} has a prompt column but no non-empty prompts.")
        path = ctx.data_dir / PROMPT_FILES_DIR / f"{_safe_name(repo_id)}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as handle:
            for prompt in pulled.prompts:
                row = {"messages": prompt.messages, "category": prompt.category}
                if prompt.intended_label in ("benign", "harmful"):
                    row["intended_label"] = prompt.intended_label
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        return servable(path), (f"Pulled {len(pulled.prompts)} prompts from {repo_id} into {path}; add them on the "
                                f"Generate tab under 'Pulled files' as {path.name}.")

    refresh_outputs = [numbers, summary, category, labeler, hub_status]
    refresh.click(refresh_all, [min_votes], refresh_outputs, api_name="dataset_refresh")
    demo.load(refresh_all, [min_votes], refresh_outputs, api_name=False)
    browse_inputs = [view, min_votes, category, intended, labeler, resolution, search]
    browse_outputs = [matches, table, browse_status, row_first, row_second, row_prompt]
    browse.click(browse_records, browse_inputs, browse_outputs, api_name="dataset_browse")
    search.submit(browse_records, browse_inputs, browse_outputs, api_name=False)
    show_row.click(row_texts, [matches, row_number], [row_prompt, row_first, row_second], api_name="dataset_row")
    table.select(on_select, [matches], [row_number, row_prompt, row_first, row_second], api_name=False)
    for suffix, button in ((".jsonl", export_jsonl), (".parquet", export_parquet)):
        button.click(export_handler(suffix), [min_votes], [export_file, export_message],
                     api_name=f"dataset_export_{suffix.lstrip('.')}")
    push.click(push_to_hub, [repo, private], [hub_status], api_name="dataset_push")
    pull.click(pull_from_hub, [pull_repo], [pull_file, pull_message], api_name="dataset_pull")
