"""Red-team tab: attack the base model (and a loaded adapter) with the built-in or uploaded suites, see safety and
utility metrics with 95% intervals, browse every answer, override the judge, and turn failures into pairs.

- Run: suites, categories, attack templates, split and case limits pick the cases (``alignment.redteam``);
  ``alignment.evaluate.evaluate`` answers and judges them under the registry's ``side()`` lock. With an adapter
  the base answers come from the same weights with the adapter disabled. Progress shows counts and time left;
  Cancel (per browser session) stops between batches.
- Overrides: a person's verdict (refused / partial / complied) replaces the judge's for that exact answer and
  the metrics recompute. Overrides are appended to ``<data_dir>/redteam/overrides.jsonl`` (who, when, the judge's
  verdict) and never rewritten; the latest line for an answer wins, and "judge" takes an override back. An
  answer is identified by case id, prompt and answer text, so a later greedy rerun that gives the same answer
  picks the person's verdict up again, while a changed answer is judged afresh.
- Failures to data (admins): ``alignment.refusal_data`` pairs from the current verdicts; chosen texts can be
  edited; "Send to labeling queue" stores them as pairs (strategy ``redteam_*``) for people to confirm, "Add to
  dataset" writes ``<data_dir>/exports/redteam-pairs-<time>.jsonl`` in TRL's conversational preference format.

Open it with ``python app.py`` (Red-team tab). Running suites, uploading suites, overriding verdicts and sending
pairs anywhere are admin-only (checked in each handler). Untrusted text (prompts, answers, uploaded names) is shown only in plain text boxes and tables. Every action
is an API endpoint (``/redteam_run``, ``/redteam_override``, ``/redteam_send_queue`` ...) for gradio_client.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from alignment.evaluate import (
    EvalSettings,
    EvaluationError,
    evaluate,
    last_user_text,
    write_report,
)
from alignment.evaluate import rescore as rescore_report
from alignment.generation import MAX_NEW_TOKENS_CAP, GenerationCancelled
from alignment.judge import BUILTIN_JUDGES
from alignment.models import ModelLoadError
from alignment.redteam import (
    CATEGORIES,
    DEFAULT_LIMIT_PER_TEMPLATE,
    SPLITS,
    TEMPLATES,
    Suite,
    SuiteError,
    build_cases,
    load_builtin_suite,
    load_user_suite,
)
from alignment.refusal_data import pairs_from_rows, to_pair_records, write_jsonl
from alignment.registry import BASE
from alignment.settings import SettingsError
from labeling.records import as_messages
from labeling.store import LabelError
from ui.cancel import JobAlreadyRunning, SessionJobs
from ui.context import AppContext
from ui.identity import require_admin

OVERRIDES_FILE = Path("redteam") / "overrides.jsonl"
REPORTS_DIR = Path("redteam") / "reports"
EXPORTS_DIR = "exports"
SIDES = ("base", "aligned")
# A person's verdict -> the judge's kind; "judge" takes an earlier override back.
VERDICTS: dict[str, str] = {"refused": "full_refusal", "partial": "partial_refusal", "complied": "compliance"}
VERDICT_NAMES: dict[str, str] = {kind: name for name, kind in VERDICTS.items()}
REVERT = "judge"
SPLIT_CHOICES = ("all", *SPLITS)
BROWSER_COLUMNS = ["#", "side", "label", "category", "template", "split", "verdict", "by", "prompt", "answer"]
PAIR_COLUMNS = ["#", "kind", "category", "template", "split", "prompt", "chosen", "rejected"]
METRICS = (  # (summary key, label in the table)
    ("harmful_compliance", "Harmful compliance (lower is better)"),
    ("jailbreak_resistance", "Jailbreak resistance (higher is better)"),
    ("false_refusal_plain", "False refusal, plain benign (lower is better)"),
    ("false_refusal_risky", "False refusal, risky-looking benign (lower is better)"),
    ("completion", "Legitimate task completion (higher is better)"),
)
EDITED = "person_edited"
EXCERPT = 160
MAX_CHOSEN_CHARS = 8000


# ---------------------------------------------------------------------------------------------- plain logic


def answer_key(row: dict[str, Any], side: str) -> str:
    """Identity of one answer: the case, its prompt and the answer text (a changed answer is judged afresh)."""
    basis = json.dumps([str(row.get("id")), row.get("prompt"), row[side].get("response", "")], ensure_ascii=False)
    return hashlib.sha256(basis.encode("utf-8")).hexdigest()[:20]


class OverrideLog:
    """Append-only JSONL of people's verdicts; the latest line per answer wins. Thread-safe within one app."""

    def __init__(self, data_dir: str | Path):
        self.path = Path(data_dir) / OVERRIDES_FILE
        self._lock = threading.Lock()

    def append(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(line)  # one write of one line: a crash leaves at most a torn last line

    def latest(self) -> tuple[dict[str, dict[str, Any]], int]:
        """The current override per answer key, and how many unreadable lines were skipped."""
        if not self.path.is_file():
            return {}, 0
        current: dict[str, dict[str, Any]] = {}
        bad = 0
        with self._lock:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if not isinstance(entry, dict) or not isinstance(entry.get("key"), str) or \
                    entry.get("verdict") not in (*VERDICTS, REVERT):
                bad += 1
                continue
            if entry["verdict"] == REVERT:
                current.pop(entry["key"], None)
            else:
                current[entry["key"]] = entry
        return current, bad


def _judge_verdict(answer: dict[str, Any]) -> dict[str, Any]:
    """The judge's own verdict, remembered the first time a person's verdict replaces it."""
    if "judge_verdict" not in answer:
        answer["judge_verdict"] = {"kind": answer.get("kind"), "refused": bool(answer.get("refused"))}
    return answer["judge_verdict"]


def apply_overrides(rows: Sequence[dict[str, Any]], overrides: dict[str, dict[str, Any]]) -> int:
    """Set each answer's verdict to the person's where one exists, else back to the judge's; returns how many."""
    applied = 0
    for row in rows:
        for side in SIDES:
            answer = row.get(side)
            if not isinstance(answer, dict):
                continue
            entry = overrides.get(answer_key(row, side))
            if entry is None:
                if "override" in answer:
                    answer.update(_judge_verdict(answer))
                    answer.pop("override")
                continue
            _judge_verdict(answer)
            kind = VERDICTS[entry["verdict"]]
            answer.update(kind=kind, refused=kind == "full_refusal",
                          override={"verdict": entry["verdict"], "by": entry.get("by"), "at": entry.get("at")})
            applied += 1
    return applied


def rescore(report: dict[str, Any]) -> dict[str, Any]:
    """Recompute summary, by-split compliance and diagnosis from the rows' current verdicts (in place)."""
    rescore_report(report)
    rows = report["rows"]
    sides = [s for s in SIDES if rows and s in rows[0]]
    report.setdefault("meta", {})["overrides"] = sum(1 for r in rows for s in sides if "override" in r[s])
    return report


def select_cases(suite: Suite, parts: Iterable[str] | None, categories: Iterable[str] | None,
                 templates: Iterable[str] | None, split: str | None, per_template: int | None,
                 limit: int | None) -> list[dict[str, Any]]:
    """Cases for a run; a total ``limit`` alternates harmful and benign cases so a small run still has both."""
    cases = build_cases(suites=list(parts) if parts else None, categories=list(categories) if categories else None,
                        templates=list(templates) if templates else None, split=split,
                        limit_per_template=per_template, suite=suite)
    if limit is not None:
        harmful = [c for c in cases if c["label"] == "harmful"]
        benign = [c for c in cases if c["label"] == "benign"]
        mixed = [c for pair in zip(harmful, benign, strict=False) for c in pair]
        cases = (mixed + harmful[len(benign):] + benign[len(harmful):])[:limit]
    return cases


def run_cases(registry: Any, cases: Sequence[dict[str, Any]], adapter: str | None, settings: EvalSettings,
              on_progress: Any = None, should_stop: Any = None) -> dict[str, Any]:
    """Evaluate ``cases`` on the registry's weights, holding its lock throughout.

    Without an adapter the base side is used (any loaded adapter disabled). With one, ``side(adapter)`` holds the
    lock and ``evaluate`` answers twice on the same weights: adapter disabled (base), then enabled (aligned).
    """
    with registry.side(adapter or BASE) as view:
        return evaluate(view, list(cases), adapter=adapter, settings=settings, on_progress=on_progress,
                        should_stop=should_stop)


def format_rate(rate: dict[str, Any] | None) -> str:
    if not isinstance(rate, dict) or rate.get("value") is None:
        return "n/a" + (f" ({rate['note']})" if isinstance(rate, dict) and rate.get("note") else "")
    return (f"{rate['value']:.1%} ({rate['count']}/{rate['n']}) "
            f"[{rate['low']:.0%}, {rate['high']:.0%}]")


def metrics_table(summary: dict[str, Any]) -> list[list[str]]:
    """[metric, base, aligned] rows; each rate as value (count/n) [95% Wilson interval]."""
    rows = []
    for key, title in METRICS:
        rows.append([title, *(format_rate((summary.get(side) or {}).get(key)) if side in summary else "-"
                              for side in SIDES)])
    reduction = summary.get("harm_reduction") or {}
    if reduction.get("value") is not None:
        interval = (f" [{reduction['low']:.0%}, {reduction['high']:.0%}]"
                    if reduction.get("low") is not None and reduction.get("high") is not None else "")
        text = (f"{reduction['value']:.1%} (n = {reduction['n']}; base complied {reduction['base_compliant']}, "
                f"aligned {reduction['aligned_compliant']}){interval} bootstrap")
    else:
        text = "n/a (" + (reduction.get("reason") or "needs base and aligned answers") + ")"
    rows.append(["Harm reduction (aligned vs base, higher is better)", "-", text])
    return rows


def category_frame(summary: dict[str, Any]) -> pd.DataFrame:
    """Harmful compliance (%) per category and side, one bar per (category, side), for a before/after chart."""
    records = []
    for category in CATEGORIES + tuple(sorted({c for s in SIDES for c in (summary.get(s) or {}).get(
            "by_category", {}) if c not in CATEGORIES})):
        for side in SIDES:
            rate = ((summary.get(side) or {}).get("by_category") or {}).get(category, {}).get("compliance")
            if not rate or rate.get("value") is None:
                continue
            records.append({"bar": f"{category} ({'before' if side == 'base' else 'after'})", "category": category,
                            "side": side, "harmful compliance %": round(100 * rate["value"], 1),
                            "n": rate["n"]})
    return pd.DataFrame(records, columns=["bar", "category", "side", "harmful compliance %", "n"])


def diagnosis_table(diagnosis: Sequence[dict[str, Any]]) -> list[list[str]]:
    if not diagnosis:
        return [["Nothing to fix by the thresholds in docs/TROUBLESHOOTING.md.", "", "", ""]]
    return [[step["step"], step["why"], ", ".join([*step.get("categories", []), *step.get("templates", [])]),
             step.get("doc", "")] for step in diagnosis]


def verdict_name(answer: dict[str, Any]) -> str:
    return VERDICT_NAMES.get(answer.get("kind"), str(answer.get("kind")))


def _excerpt(text: Any, limit: int = EXCERPT) -> str:
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= limit else flat[:limit] + "…"


def browser_rows(rows: Sequence[dict[str, Any]], category: str = "", template: str = "", verdict: str = "",
                 side: str = "", label: str = "") -> list[list[Any]]:
    """One table row per answer (case x side), filtered; "" means any."""
    out = []
    for number, row in enumerate(rows, 1):
        for s in SIDES:
            answer = row.get(s)
            if not isinstance(answer, dict) or (side and s != side):
                continue
            if (category and row.get("category") != category) or (label and row.get("label") != label):
                continue
            if template and (row.get("template") or "") != template:
                continue
            if verdict and verdict_name(answer) != verdict:
                continue
            by = (answer.get("override") or {}).get("by")
            out.append([number, s, row["label"], row.get("category") or "", row.get("template") or "",
                        row.get("split") or "", verdict_name(answer), f"person ({by})" if by else "judge",
                        _excerpt(last_user_text(row["prompt"])), _excerpt(answer.get("response"))])
    return out


def format_prompt(prompt: str | list[dict[str, str]]) -> str:
    messages = as_messages(prompt)
    if len(messages) == 1:
        return messages[0].get("content", "")
    return "\n\n".join(f"[{m.get('role', '?')}]\n{m.get('content', '')}" for m in messages)


def verdict_text(answer: dict[str, Any] | None) -> str:
    if not isinstance(answer, dict):
        return "(no answer on this side)"
    override = answer.get("override")
    if override:
        judged = VERDICT_NAMES.get((answer.get("judge_verdict") or {}).get("kind"), "?")
        return (f"{verdict_name(answer)} - set by {override.get('by')} at {override.get('at')}; "
                f"the judge said {judged} ({answer.get('reason', '')})")
    return f"{verdict_name(answer)} - judge, refusal score {answer.get('score', 0):.2f}: {answer.get('reason', '')}"


def pair_table(pairs: Sequence[dict[str, Any]]) -> list[list[Any]]:
    return [[number, "harmful complied" if pair["label"] == "harmful" else "benign refused",
             pair.get("category") or "", pair.get("template") or "", pair.get("split") or "",
             _excerpt(last_user_text(pair["prompt"])), _excerpt(pair["chosen"][0]["content"]),
             _excerpt(pair["rejected"][0]["content"])] for number, pair in enumerate(pairs, 1)]


# ---------------------------------------------------------------------------------------------- handlers' helpers


def _int_or_none(value: Any, what: str, minimum: int = 1) -> int | None:
    if value in (None, ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{what} must be a whole number or empty, got {value!r}.") from None
    if number != int(number) or number < minimum:
        raise gr.Error(f"{what} must be a whole number of at least {minimum}, got {value!r}.")
    return int(number)


def _row_index(report: dict[str, Any] | None, number: Any) -> int:
    if not report or not report.get("rows"):
        raise gr.Error("Run the red-team suite first; there are no results yet.")
    index = _int_or_none(number, "Case #")
    if index is None or index > len(report["rows"]):
        raise gr.Error(f"Case # must be between 1 and {len(report['rows'])} (the # column of the case browser).")
    return index - 1


def _side_of(report: dict[str, Any], row: dict[str, Any], side: str) -> str:
    if side not in SIDES:
        raise gr.Error("Side must be 'base' or 'aligned'.")
    if side not in row:
        raise gr.Error("This run has no aligned answers (no adapter was chosen); use side 'base'.")
    return side


def _filter_choices(report: dict[str, Any]) -> tuple[Any, Any]:
    rows = report["rows"]
    categories = sorted({str(r.get("category")) for r in rows if r.get("category")})
    templates = sorted({str(r.get("template")) for r in rows if r.get("template")})
    return (gr.update(choices=[("any", ""), *categories], value=""),
            gr.update(choices=[("any", ""), *templates], value=""))


def _timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


# ---------------------------------------------------------------------------------------------- the tab


def build(ctx: AppContext, demo: gr.Blocks) -> None:
    # Per-session cancel flags, alive only while that session's run lasts; owned by this build() call.
    jobs = SessionJobs()
    overrides = OverrideLog(ctx.data_dir)

    report_state = gr.State(None)
    suite_state = gr.State(None)  # the uploaded user suite (a Suite), merged with the built-in one at run time
    pairs_state = gr.State([])

    gr.Markdown("Admins: attack the model with the red-team suites and compare base and aligned answers. Rates show "
                "value (count/n) [95% interval]; small runs give wide intervals. See docs/REDTEAM.md.")
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                parts = gr.CheckboxGroup(choices=["harmful", "benign"], value=["harmful", "benign"], label="Suites",
                                         info="Harmful attacks and benign controls (plain and risky-looking).")
                split = gr.Radio(choices=list(SPLIT_CHOICES), value="all", label="Split",
                                 info="heldout: behaviours and wordings never used for training pairs.")
            with gr.Row():
                categories = gr.Dropdown(choices=list(CATEGORIES), value=[], multiselect=True,
                                         label="Harm categories (empty = all)")
                templates = gr.Dropdown(choices=list(TEMPLATES), value=[], multiselect=True,
                                        label="Attack templates (empty = all)")
            with gr.Row():
                per_template = gr.Number(value=DEFAULT_LIMIT_PER_TEMPLATE, precision=0, minimum=1,
                                         label="Cases per attack template (blank = every combination)")
                limit = gr.Number(value=None, precision=0, minimum=1, label="Case limit (blank = all)",
                                  info="Harmful and benign alternate, so a small run keeps both.")
            with gr.Accordion("Your own suite (behaviours, templates, benign prompts)", open=False):
                suite_file = gr.File(label="Suite file (.yaml, .yml or .jsonl)",
                                     file_types=[".yaml", ".yml", ".jsonl"], type="filepath")
                with gr.Row():
                    suite_load = gr.Button("Check and use this suite", size="sm")
                    suite_clear = gr.Button("Stop using it", size="sm")
                suite_message = gr.Textbox(label="Suite check", interactive=False, lines=2)
        with gr.Column(scale=2):
            adapter = gr.Dropdown(choices=[("none (base only)", "")], value="", label="Aligned side: adapter",
                                  info="Base answers always run; with an adapter, base = adapter off on the same "
                                       "weights, aligned = adapter on.")
            refresh = gr.Button("Refresh adapter list", size="sm")
            with gr.Row():
                max_new_tokens = gr.Slider(8, MAX_NEW_TOKENS_CAP, value=128, step=8, label="Max new tokens",
                                           info=EvalSettings.__dataclass_fields__["max_new_tokens"].metadata["help"])
                do_sample = gr.Checkbox(value=False, label="Sample (off = greedy, reproducible)")
            with gr.Row():
                temperature = gr.Number(value=0.7, label="Temperature (when sampling)")
                judge = gr.Dropdown(choices=list(BUILTIN_JUDGES), value="rules", label="Judge",
                                    info="rules: sentence-level rules (docs/JUDGE.md); keyword-*: cheap baselines.")
            with gr.Row():
                capability = gr.Checkbox(value=False, label="Score capability (reference answers' log-likelihood)",
                                         info="Slower; feeds the capability-drop check of the diagnosis.")
                batch_size = gr.Slider(1, 64, value=16, step=1, label="Batch size",
                                       info=EvalSettings.__dataclass_fields__["batch_size"].metadata["help"]
                                       + " Larger is faster until memory runs out; Cancel acts between batches.")
            with gr.Row():
                run = gr.Button("Run red-team", variant="primary")
                cancel = gr.Button("Cancel", variant="stop")
    status = gr.Textbox(label="Status", interactive=False, lines=2)

    with gr.Accordion("Results", open=True):
        metrics = gr.Dataframe(headers=["metric", "base (before)", "aligned (after)"], value=[], interactive=False,
                               wrap=True, label="Metrics: value (count/n) [95% interval]",
                               column_widths=["30%", "35%", "35%"])
        # Starts empty (None): an empty DataFrame would fix the y column's type as text for later updates.
        chart = gr.BarPlot(value=None, x="bar", y="harmful compliance %", color="side", y_lim=[0, 100],
                           label="Harmful compliance by category, before (base) and after (aligned)",
                           x_label_angle=-40)
        diagnosis = gr.Dataframe(headers=["next step", "why", "concerns", "read more"], value=[], interactive=False,
                                 wrap=True, label="Diagnosis: what to change next",
                                 column_widths=["35%", "35%", "15%", "15%"])

    with gr.Accordion("Case browser", open=True):
        with gr.Row():
            f_category = gr.Dropdown(choices=[("any", "")], value="", label="Category")
            f_template = gr.Dropdown(choices=[("any", "")], value="", label="Template")
            f_verdict = gr.Dropdown(choices=[("any", ""), *VERDICTS], value="", label="Verdict")
            f_side = gr.Dropdown(choices=[("any", ""), *SIDES], value="", label="Side")
            f_label = gr.Dropdown(choices=[("any", ""), "harmful", "benign"], value="", label="Label")
        browser = gr.Dataframe(headers=BROWSER_COLUMNS, value=[], interactive=False, wrap=True, max_height=420,
                               label="Answers (select a row to see it in full)")
        with gr.Row():
            case_no = gr.Number(value=1, precision=0, minimum=1, label="Case #")
            case_side = gr.Radio(choices=list(SIDES), value="base", label="Side")
            show_case = gr.Button("Show case", size="sm")
        case_prompt = gr.Textbox(label="Prompt", interactive=False, lines=3, max_lines=16)
        with gr.Row(equal_height=True):
            with gr.Column():
                base_answer = gr.Textbox(label="Base answer", interactive=False, lines=6, max_lines=24)
                base_verdict = gr.Textbox(label="Base verdict", interactive=False, lines=2)
            with gr.Column():
                aligned_answer = gr.Textbox(label="Aligned answer", interactive=False, lines=6, max_lines=24)
                aligned_verdict = gr.Textbox(label="Aligned verdict", interactive=False, lines=2)
        with gr.Row():
            verdict = gr.Radio(choices=[*VERDICTS, REVERT], value="refused", label="Your verdict for this answer",
                               info="'judge' takes your earlier verdict back. Kept in data/redteam/overrides.jsonl.")
            override = gr.Button("Override verdict", variant="secondary")

    with gr.Accordion("Failures to training data (admins)", open=False):
        with gr.Row():
            pair_side = gr.Radio(choices=list(SIDES), value="aligned", label="Learn from the failures of",
                                 info="aligned when an adapter ran, else base.")
            pair_split = gr.Radio(choices=["train", "all"], value="train", label="Cases",
                                  info="train keeps held-out cases unseen, so they still measure generalisation.")
            make_pairs = gr.Button("Build refusal pairs")
        pairs_table = gr.Dataframe(headers=PAIR_COLUMNS, value=[], interactive=False, wrap=True, max_height=320,
                                   label="Proposed pairs (chosen = better answer)")
        with gr.Row():
            pair_no = gr.Number(value=1, precision=0, minimum=1, label="Pair #")
            show_pair = gr.Button("Show pair", size="sm")
        pair_prompt = gr.Textbox(label="Prompt", interactive=False, lines=3, max_lines=12)
        with gr.Row(equal_height=True):
            pair_chosen = gr.Textbox(label="Chosen (edit, then save)", lines=6, max_lines=24,
                                     max_length=MAX_CHOSEN_CHARS)
            pair_rejected = gr.Textbox(label="Rejected (the model's answer)", interactive=False, lines=6, max_lines=24)
        with gr.Row():
            save_pair = gr.Button("Save chosen text", size="sm")
            send_queue = gr.Button("Send to labeling queue", variant="primary")
            add_dataset = gr.Button("Add to dataset")
        pairs_message = gr.Textbox(label="Pairs", interactive=False, lines=2)

    with gr.Accordion("Save the report", open=False):
        save_report = gr.Button("Save report (JSON + Markdown)")
        report_files = gr.File(label="Report files", file_count="multiple", interactive=False)

    filters = [f_category, f_template, f_verdict, f_side, f_label]
    detail = [case_prompt, base_answer, base_verdict, aligned_answer, aligned_verdict]
    results = [metrics, chart, diagnosis, browser]

    # ------------------------------------------------------------------ helpers bound to this tab

    def chart_view(summary: dict[str, Any]) -> Any:
        frame = category_frame(summary)
        if frame.empty:
            return gr.BarPlot(value=None)
        return gr.BarPlot(value=frame, sort=list(frame["bar"]))  # keep before/after next to each other

    def result_views(report: dict[str, Any], *filter_values: str) -> list[Any]:
        return [metrics_table(report["summary"]), chart_view(report["summary"]),
                diagnosis_table(report.get("diagnosis") or []), browser_rows(report["rows"], *filter_values)]

    def case_view(report: dict[str, Any], index: int) -> list[str]:
        row = report["rows"][index]
        return [format_prompt(row["prompt"]), (row.get("base") or {}).get("response", ""),
                verdict_text(row.get("base")), (row.get("aligned") or {}).get("response", ""),
                verdict_text(row.get("aligned"))]

    # ------------------------------------------------------------------ handlers

    def use_suite(path: str | None, request: gr.Request) -> tuple[Any, str, Any]:
        require_admin(ctx, request, action="add red-team suites")
        if not path:
            raise gr.Error("Choose a suite file first (.yaml, .yml or .jsonl; see docs/REDTEAM.md for the layout).")
        try:
            user = load_user_suite(path)
            merged = load_builtin_suite().merged(user)
        except SuiteError as exc:
            raise gr.Error(str(exc).replace(str(path), Path(path).name), title="Suite not used") from exc
        families = sorted({v.template for v in merged.variants},
                          key=lambda t: (t not in TEMPLATES, TEMPLATES.index(t) if t in TEMPLATES else 0, t))
        counts = user.counts()
        message = (f"Using {Path(path).name} with the built-in suites: {counts['behaviours']} behaviours, "
                   f"{counts['template_variants']} template variants, {counts['benign']} benign prompts added.")
        return user, message, gr.update(choices=families)

    def drop_suite() -> tuple[None, str, Any]:
        return None, "Using the built-in suites only.", gr.update(choices=list(TEMPLATES), value=[])

    def run_suite(user_suite: Suite | None, part_values: list[str], category_values: list[str],
                  template_values: list[str], split_value: str, per_template_value: Any, limit_value: Any,
                  adapter_name: str | None, max_tokens: float, sample: bool, temp: float, judge_name: str,
                  score_capability: bool, batch: float, request: gr.Request,
                  progress: gr.Progress = gr.Progress()) -> list[Any]:  # noqa: B008 - gradio's injection idiom
        require_admin(ctx, request, action="run red-team suites")
        if not part_values:
            raise gr.Error("Pick at least one suite: harmful, benign or both.")
        if split_value not in SPLIT_CHOICES:
            raise gr.Error(f"Split must be one of {', '.join(SPLIT_CHOICES)}.")
        if judge_name not in BUILTIN_JUDGES:
            raise gr.Error(f"Judge must be one of {', '.join(BUILTIN_JUDGES)}.")
        adapter_name = adapter_name or None
        if adapter_name and adapter_name not in ctx.registry.adapters():
            raise gr.Error(f"No adapter named {adapter_name!r} is loaded; load it on the Train or Compare tab, or "
                           "pick 'none'.")
        try:
            suite = load_builtin_suite().merged(user_suite) if user_suite else load_builtin_suite()
            cases = select_cases(suite, part_values, category_values, template_values,
                                 None if split_value == "all" else split_value,
                                 _int_or_none(per_template_value, "Cases per attack template"),
                                 _int_or_none(limit_value, "Case limit"))
            settings = EvalSettings(max_new_tokens=int(max_tokens), do_sample=bool(sample),
                                    temperature=float(temp or 0.7), judge=judge_name,
                                    capability=bool(score_capability), batch_size=int(batch))
        except (SuiteError, SettingsError, ValueError) as exc:
            raise gr.Error(str(exc)) from exc
        if not cases:
            raise gr.Error("These choices select no cases: widen the categories, templates or split.")

        session = request.session_hash or "local"
        try:
            stop = jobs.start(session)
        except JobAlreadyRunning:
            raise gr.Error("A red-team run of yours is already running; wait for it or cancel it.") from None
        started = time.monotonic()

        def on_progress(done: int, total: int) -> None:
            elapsed = time.monotonic() - started
            left = f", about {elapsed / done * (total - done):.0f} s left" if done else ""
            progress((done, total), desc=f"Red-teaming: {done}/{total} answers{left}", unit="answers")

        try:
            progress((0, len(cases)), desc=f"Red-teaming {len(cases)} cases", unit="answers")
            report = run_cases(ctx.registry, cases, adapter_name, settings, on_progress, stop.is_set)
        except GenerationCancelled as exc:
            return [gr.skip()] * 5 + [f"Cancelled: stopped after {exc.done} of {exc.total} prompts on one side. "
                                      "Nothing was scored; earlier results (if any) are unchanged.",
                                      *[gr.skip()] * 6]
        except (ModelLoadError, EvaluationError, SettingsError) as exc:
            raise gr.Error(str(exc)) from exc
        finally:
            jobs.finish(session)
        report["meta"].update(model=ctx.registry.model_name, adapter=adapter_name,
                              adapter_path=ctx.registry.adapters().get(adapter_name or ""),
                              selection={"suites": part_values, "categories": category_values or "all",
                                         "templates": template_values or "all", "split": split_value,
                                         "per_template": per_template_value, "limit": limit_value,
                                         "user_suite": bool(user_suite)})
        current, bad = overrides.latest()
        applied = apply_overrides(report["rows"], current)
        rescore(report)
        sides = "base and " + adapter_name if adapter_name else "base"
        message = (f"Red-teamed {len(cases)} cases ({sides}) in {report['meta']['seconds']} s with the "
                   f"{judge_name} judge.")
        if applied:
            message += f" {applied} verdict(s) set by people earlier were applied."
        if bad:
            message += f" {bad} unreadable line(s) in {overrides.path} were skipped."
        views = result_views(report, "", "", "", "", "")
        category_update, template_update = _filter_choices(report)
        return [report, *views, message, category_update, template_update, gr.update(value=""),
                gr.update(value=""), gr.update(value=""), gr.update(value="aligned" if adapter_name else "base")]

    def cancel_run(request: gr.Request) -> str:
        if not jobs.cancel(request.session_hash or "local"):
            return "No red-team run of yours is running."
        return "Stopping after the current batch; nothing is scored from a cancelled run."

    def filter_cases(report: dict[str, Any] | None, category: str, template: str, verdict_value: str, side: str,
                     label: str) -> list[list[Any]]:
        if not report:
            return []
        return browser_rows(report["rows"], category, template, verdict_value, side, label)

    def show(report: dict[str, Any] | None, number: Any) -> list[str]:
        return case_view(report, _row_index(report, number))

    def select_case(report: dict[str, Any] | None, evt: gr.SelectData) -> list[Any]:
        values = evt.row_value or []
        if not report or len(values) < 2:
            return [gr.skip()] * (2 + len(detail))
        index = _row_index(report, values[0])
        return [index + 1, values[1], *case_view(report, index)]

    def override_verdict(report: dict[str, Any] | None, number: Any, side: str, value: str, category: str,
                         template: str, verdict_value: str, side_filter: str, label: str,
                         request: gr.Request) -> list[Any]:
        who = require_admin(ctx, request, action="override verdicts")
        index = _row_index(report, number)
        row = report["rows"][index]
        side = _side_of(report, row, side)
        if value not in (*VERDICTS, REVERT):
            raise gr.Error(f"Verdict must be one of {', '.join((*VERDICTS, REVERT))}.")
        answer = row[side]
        judged = (answer.get("judge_verdict") or {}).get("kind", answer.get("kind"))
        entry = {"key": answer_key(row, side), "case_id": row.get("id"), "side": side, "verdict": value,
                 "judge_kind": judged, "by": who, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "model": report.get("meta", {}).get("model"), "adapter": report.get("meta", {}).get("adapter")}
        try:
            overrides.append(entry)
            current, _bad = overrides.latest()
        except OSError as exc:
            raise gr.Error(f"Could not save the verdict to {overrides.path}: {exc}. Check the data folder.") from exc
        apply_overrides(report["rows"], current)
        rescore(report)
        message = (f"Case {index + 1} ({side}): the judge's verdict is back." if value == REVERT else
                   f"Case {index + 1} ({side}) is now '{value}' (the judge said {VERDICT_NAMES.get(judged, judged)}). "
                   "Metrics recomputed.")
        views = result_views(report, category, template, verdict_value, side_filter, label)
        return [report, *views, *case_view(report, index), message]

    def build_pairs(report: dict[str, Any] | None, side: str, split_value: str) -> tuple[Any, ...]:
        if not report or not report.get("rows"):
            raise gr.Error("Run the red-team suite first; pairs are built from its failures.")
        rows = report["rows"]
        if side == "aligned" and "aligned" not in rows[0]:
            side = "base"
        try:
            pairs, stats = pairs_from_rows(rows, side=side, split=None if split_value == "all" else split_value)
        except ValueError as exc:
            raise gr.Error(str(exc)) from exc
        message = (f"{stats['pairs']} pairs from the {side} answers: {stats['harmful_complied']} harmful prompts "
                   f"complied with, {stats['benign_refused']} benign prompts refused.")
        if stats["skipped_split"]:
            message += (f" {stats['skipped_split']} cases of another split were left out (choose 'all' to use them; "
                        "they then stop measuring generalisation).")
        if stats["skipped_no_helpful_answer"]:
            message += f" {stats['skipped_no_helpful_answer']} refused benign prompts have no reference answer."
        if stats["skipped_empty_answer"]:
            message += f" {stats['skipped_empty_answer']} empty answers were skipped."
        for pair in pairs:
            pair["model"] = report.get("meta", {}).get("model")
            pair["side"] = side
        return pairs, pair_table(pairs), message

    def _pair_index(pairs: list[dict] | None, number: Any) -> int:
        if not pairs:
            raise gr.Error("Build the refusal pairs first.")
        index = _int_or_none(number, "Pair #")
        if index is None or index > len(pairs):
            raise gr.Error(f"Pair # must be between 1 and {len(pairs)}.")
        return index - 1

    def show_one_pair(pairs: list[dict] | None, number: Any) -> tuple[str, str, str]:
        pair = pairs[_pair_index(pairs, number)]
        return format_prompt(pair["prompt"]), pair["chosen"][0]["content"], pair["rejected"][0]["content"]

    def edit_pair(pairs: list[dict] | None, number: Any, text: str) -> tuple[Any, ...]:
        index = _pair_index(pairs, number)
        text = (text or "").strip()
        if not text:
            raise gr.Error("The chosen text is empty; write the better answer or keep the proposal.")
        if len(text) > MAX_CHOSEN_CHARS:
            raise gr.Error(f"The chosen text is longer than {MAX_CHOSEN_CHARS} characters; shorten it.")
        pairs = [dict(p) for p in pairs]
        pairs[index]["chosen"] = [{"role": "assistant", "content": text}]
        pairs[index]["chosen_from"] = EDITED  # the queue's strategy then says a person wrote the chosen answer
        return pairs, pair_table(pairs), f"Pair {index + 1}: chosen text saved (send or add it to keep it)."

    def send_to_queue(pairs: list[dict] | None, request: gr.Request) -> str:
        require_admin(ctx, request, action="send red-team pairs to the labeling queue")
        if not pairs:
            raise gr.Error("Build the refusal pairs first (there are none to send).")
        model = pairs[0].get("model") or ctx.registry.model_name
        try:
            added = ctx.store.add_pairs(to_pair_records(pairs, model_name=f"{model} ({pairs[0].get('side')})"))
        except (LabelError, ValueError) as exc:
            raise gr.Error(str(exc)) from exc
        already = len(pairs) - added
        return (f"Sent {added} pairs to the labeling queue" + (f" ({already} were already there)" if already else "")
                + ". Labelers see them on the Label tab; answer A is the proposed better answer.")

    def add_to_dataset(pairs: list[dict] | None, request: gr.Request) -> str:
        require_admin(ctx, request, action="add red-team pairs to the dataset")
        if not pairs:
            raise gr.Error("Build the refusal pairs first (there are none to add).")
        path = ctx.data_dir / EXPORTS_DIR / f"redteam-pairs-{_timestamp()}.jsonl"
        try:
            write_jsonl(pairs, path)
        except OSError as exc:
            raise gr.Error(f"Could not write {path}: {exc}. Check the data folder.") from exc
        return (f"Wrote {len(pairs)} pairs to {path} (TRL conversational preference format: prompt, chosen, "
                "rejected). Train on it, or merge it with the Dataset tab's export.")

    def save(report: dict[str, Any] | None) -> tuple[list[str], str]:
        from ui.dataset import servable

        if not report:
            raise gr.Error("Run the red-team suite first; there is no report to save.")
        target = ctx.data_dir / REPORTS_DIR / f"redteam-{_timestamp()}.json"
        try:
            json_path, md_path = write_report(report, target)
        except OSError as exc:
            raise gr.Error(f"Could not write the report to {target}: {exc}.") from exc
        return [servable(json_path), servable(md_path)], f"Saved {json_path} and {md_path}."

    def refresh_adapters() -> Any:
        return gr.update(choices=[("none (base only)", ""), *ctx.registry.adapters()])

    # ------------------------------------------------------------------ wiring

    suite_load.click(use_suite, [suite_file], [suite_state, suite_message, templates], api_name="redteam_suite")
    suite_clear.click(drop_suite, None, [suite_state, suite_message, templates], api_name="redteam_suite_clear")
    run_inputs = [suite_state, parts, categories, templates, split, per_template, limit, adapter, max_new_tokens,
                  do_sample, temperature, judge, capability, batch_size]
    run.click(run_suite, run_inputs, [report_state, *results, status, f_category, f_template, f_verdict, f_side,
                                      f_label, pair_side],
              api_name="redteam_run", concurrency_limit=1, concurrency_id="redteam")
    # concurrency_limit=None: a cancel must never wait in the queue behind the run it cancels.
    cancel.click(cancel_run, None, [status], api_name="redteam_cancel", concurrency_limit=None)
    for box in filters:
        box.change(filter_cases, [report_state, *filters], [browser],
                   api_name="redteam_filter" if box is f_category else False)
    show_case.click(show, [report_state, case_no], detail, api_name="redteam_case")
    browser.select(select_case, [report_state], [case_no, case_side, *detail], api_name=False)
    override.click(override_verdict, [report_state, case_no, case_side, verdict, *filters],
                   [report_state, *results, *detail, status], api_name="redteam_override")
    make_pairs.click(build_pairs, [report_state, pair_side, pair_split], [pairs_state, pairs_table, pairs_message],
                     api_name="redteam_pairs")
    show_pair.click(show_one_pair, [pairs_state, pair_no], [pair_prompt, pair_chosen, pair_rejected],
                    api_name="redteam_pair")
    save_pair.click(edit_pair, [pairs_state, pair_no, pair_chosen], [pairs_state, pairs_table, pairs_message],
                    api_name="redteam_pair_edit")
    send_queue.click(send_to_queue, [pairs_state], [pairs_message], api_name="redteam_send_queue")
    add_dataset.click(add_to_dataset, [pairs_state], [pairs_message], api_name="redteam_add_dataset")
    save_report.click(save, [report_state], [report_files, status], api_name="redteam_save")
    demo.load(refresh_adapters, None, [adapter], api_name=False)
    refresh.click(refresh_adapters, None, [adapter], api_name=False)
