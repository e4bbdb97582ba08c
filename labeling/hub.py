"""Push the preference dataset to a Hugging Face Hub dataset repo, and pull datasets from the Hub.

A push writes, in one commit, the exported preference rows as parquet (``data/train-00000-of-00001.parquet``, so
``datasets.load_dataset(repo)`` works), a dataset card (``README.md`` with YAML metadata and the numbers that
matter) and the raw label events (``raw/events-*.jsonl``, what ``restore`` reads back). New repos are private.

The token comes from the explicit argument (the app passes the OAuth token of a signed-in Space user), else
``HF_TOKEN``, else the ``hf auth login`` cache. It never appears in a message: every error is translated into a
``HubError`` whose text says what happened and what to do, with the token scrubbed out. When the Hub cannot be
reached, everything stays local and the status file says a push is pending.

Command line::

    python -m labeling.hub push --data-dir data --repo OWNER/NAME [--public] [--license apache-2.0]
    python -m labeling.hub pull --repo OWNER/NAME [--out rows.jsonl]
    python -m labeling.hub restore --data-dir data --repo OWNER/NAME
    python -m labeling.hub status --data-dir data
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labeling.records import PromptRecord, as_messages

if TYPE_CHECKING:
    import datasets
    from huggingface_hub import HfApi

    from labeling.hub_sync import EventLog

logger = logging.getLogger(__name__)

REPO_TYPE = "dataset"
PARQUET_PATH = "data/train-00000-of-00001.parquet"
RAW_PREFIX = "raw"
STATUS_FILE = Path("hub") / "status.json"
STATS_MARKER = "labeling-stats"
REPO_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TOKEN_SETTINGS_URL = "https://huggingface.co/settings/tokens"


class HubError(Exception):
    """A Hub operation failed; ``str(error)`` is a message for people, ``kind`` is for code.

    Kinds: ``no_token``, ``invalid_token``, ``read_only``, ``not_owner``, ``not_found``, ``unreachable``,
    ``bad_input``, ``hub_error``. ``status`` carries the pending state after a failed push.
    """

    def __init__(self, kind: str, message: str, status: HubStatus | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status

    @property
    def pending(self) -> bool:
        return self.status is not None and self.status.pending


@dataclass
class HubStatus:
    """Where the data of one data dir stands with the Hub, as the app shows it."""

    repo_id: str | None = None
    pending: bool = False  # local changes that have not reached the Hub yet
    last_error: str | None = None  # in words, token-free
    last_push_at: float | None = None
    last_commit: str | None = None
    last_message: str | None = None

    def describe(self) -> str:
        if self.repo_id is None:
            return "Not pushed to the Hugging Face Hub yet."
        if self.pending:
            return f"Push to {self.repo_id} pending: {self.last_error or 'not pushed yet'}"
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.last_push_at)) if self.last_push_at else "never"
        return f"Up to date with {self.repo_id} (last push {when})."


@dataclass
class PushResult:
    repo_id: str
    url: str
    commit_oid: str | None
    commit_message: str
    rows: int
    raw_files: int
    status: HubStatus


@dataclass
class PulledDataset:
    """A dataset pulled from the Hub: preference rows (``prompt``/``chosen``/``rejected``) or prompts."""

    repo_id: str
    kind: str  # "preference" | "prompts"
    dataset: datasets.Dataset
    prompts: list[PromptRecord] = field(default_factory=list)


# -- token, endpoint, client ------------------------------------------------------------------------------------

def resolve_token(token: str | None = None) -> str | None:
    """The explicit token, else ``HF_TOKEN``, else the login cache; ``None`` when there is none."""
    if token:
        return token.strip()
    from huggingface_hub import get_token

    found = get_token()
    return found.strip() if found else None


def hub_endpoint() -> str:
    """The Hub URL, read now (``huggingface_hub.constants`` reads ``HF_ENDPOINT`` once, at import)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def make_api(token: str | None, endpoint: str | None = None) -> HfApi:
    from huggingface_hub import HfApi

    # token=False stops the client from falling back to a cached login we were not asked to use.
    return HfApi(endpoint=endpoint or hub_endpoint(), token=token or False, library_name="alignment-labeling")


def scrub(text: str, token: str | None) -> str:
    """Remove the token, and anything shaped like a Hub token, from text meant for people or logs."""
    if token:
        text = text.replace(token, "***")
    return re.sub(r"\bhf_[A-Za-z0-9]{8,}\b", "hf_***", text)


def validate_repo_id(repo_id: str) -> str:
    repo_id = (repo_id or "").strip()
    if not REPO_ID_PATTERN.match(repo_id):
        raise HubError("bad_input", f"'{repo_id}' is not a Hub repo id: write it as OWNER/NAME, e.g. alice/refusals.")
    return repo_id


def _reason(error: BaseException) -> str:
    """A transport failure in words."""
    name = type(error).__name__
    text = str(error).lower()
    if "offline" in name.lower():
        return "offline mode is on (HF_HUB_OFFLINE is set)"
    if "timeout" in name.lower() or "timed out" in text:
        return "the connection timed out"
    if "refused" in text or name == "ConnectError":
        return "the connection was refused"
    if "protocol" in name.lower() or "disconnect" in text or "closed" in text or "reset" in text:
        return "the connection was cut off before the Hub answered"
    return f"network error ({name})"


def translate_error(error: BaseException, repo_id: str | None, token: str | None, action: str) -> HubError:
    """Turn a client exception into a HubError that says what to do, never quoting the token."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(error, HubError):
        return error
    repo = repo_id or "the repo"
    if isinstance(error, OfflineModeIsEnabled):
        return HubError("unreachable", f"Could not {action}: {_reason(error)}. Unset HF_HUB_OFFLINE to use the Hub.")
    if isinstance(error, (RepositoryNotFoundError, GatedRepoError)):
        hint = "" if token else " If it is private, set HF_TOKEN or sign in with Hugging Face."
        return HubError("not_found", f"Could not {action}: dataset repo {repo} was not found, or your token cannot "
                                     f"see it.{hint}")
    if isinstance(error, RevisionNotFoundError):
        return HubError("not_found", f"Could not {action}: that revision of {repo} does not exist.")
    if isinstance(error, HfHubHTTPError):
        status = error.response.status_code if error.response is not None else None
        server_says = ""
        if error.server_message:
            server_says = f" The Hub said: {scrub(error.server_message.strip(), token)}"
        if status == 401:
            return HubError("invalid_token", f"Could not {action}: the Hub refused the token (invalid or expired). "
                                             f"Create a new one at {TOKEN_SETTINGS_URL} and set HF_TOKEN.")
        if status == 403:
            return HubError("read_only", f"Could not {action}: your token is not allowed to write to {repo}. Use a "
                                         f"token with write access ({TOKEN_SETTINGS_URL}) for a repo you own or an "
                                         f"organisation you belong to.{server_says}")
        if status is not None and status >= 500:
            return HubError("unreachable", f"Could not {action}: the Hub had an internal error ({status}); try "
                                           f"again later.{server_says}")
        return HubError("hub_error", f"Could not {action}: the Hub answered {status}.{server_says}")
    if _is_transport_error(error):
        return HubError("unreachable", f"Could not {action}: the Hugging Face Hub could not be "
                                       f"reached ({_reason(error)}).")
    return HubError("hub_error", f"Could not {action}: {type(error).__name__}: {scrub(str(error), token)}")


def _is_transport_error(error: BaseException) -> bool:
    try:
        import httpx2

        if isinstance(error, httpx2.TransportError):
            return True
    except ImportError:  # huggingface_hub moved to another HTTP library: fall back on names
        pass
    return isinstance(error, (ConnectionError, TimeoutError)) or type(error).__name__.endswith(
        ("ConnectError", "TimeoutException", "RemoteProtocolError", "ReadError", "WriteError"))


@contextmanager
def hub_call(repo_id: str | None, token: str | None, action: str) -> Iterator[None]:
    """Run client calls, re-raising any failure as a token-free HubError (the original is not chained)."""
    try:
        yield
    except HubError:
        raise
    except Exception as error:  # noqa: BLE001 - every client failure becomes a message for people
        translated = translate_error(error, repo_id, token, action)
        logger.debug("Hub call failed: %s", translated.message)
        raise translated from None


def require_write_access(api: HfApi, repo_id: str, token: str | None) -> str:
    """Check before writing that there is a token, that it can write, and that it may write to this namespace.

    Returns the user name. The Hub enforces all of this too; asking first gives a message that says exactly what
    is wrong, instead of a 403 or 404 after the upload.
    """
    if not token:
        raise HubError("no_token", "No Hugging Face token found, so nothing can be pushed. Set HF_TOKEN, run "
                                   "`hf auth login`, or sign in with Hugging Face in the app. Your labels are kept "
                                   "locally.")
    with hub_call(repo_id, token, "check your Hugging Face token"):
        info = api.whoami(token=token)
    user = info.get("name", "")
    namespaces = {user} | {org.get("name", "") for org in info.get("orgs", []) or []}
    access = (info.get("auth") or {}).get("accessToken") or {}
    if access.get("role") == "read":
        raise HubError("read_only", f"The token of '{user}' is read-only, so it cannot push to {repo_id}. Create a "
                                    f"token with write access at {TOKEN_SETTINGS_URL} and use that one.")
    owner = repo_id.split("/", 1)[0]
    if owner not in namespaces:
        name = repo_id.split("/", 1)[1]
        raise HubError("not_owner", f"{repo_id} belongs to '{owner}', but you are signed in as '{user}'. Push to a "
                                    f"repo of your own (e.g. {user}/{name}) or of an organisation you belong to.")
    return user


# -- status file ------------------------------------------------------------------------------------------------

def read_status(data_dir: str | Path) -> HubStatus:
    path = Path(data_dir) / STATUS_FILE
    try:
        return HubStatus(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return HubStatus()


def write_status(data_dir: str | Path, status: HubStatus) -> None:
    path = Path(data_dir) / STATUS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(status), indent=1), encoding="utf-8")
    tmp.replace(path)


def record_failure(data_dir: str | Path, repo_id: str, error: HubError) -> HubStatus:
    status = read_status(data_dir)
    status.repo_id, status.pending, status.last_error = repo_id, True, error.message
    write_status(data_dir, status)
    error.status = status
    return status


def record_success(data_dir: str | Path, repo_id: str, commit_oid: str | None, message: str) -> HubStatus:
    status = HubStatus(repo_id=repo_id, pending=False, last_error=None, last_push_at=time.time(),
                       last_commit=commit_oid, last_message=message)
    write_status(data_dir, status)
    return status


# -- dataset card -----------------------------------------------------------------------------------------------

COLUMN_HELP = {
    "prompt": "list of messages ({role, content}) up to the last user turn",
    "chosen": "list with the preferred assistant message ({role: assistant, content})",
    "rejected": "list with the other assistant message",
    "category": "prompt category (e.g. a red-team attack category or a benign topic)",
    "intended_label": "whether the prompt was written as benign or harmful",
    "pair_id": "stable id of the labeled pair (matches the raw events under raw/)",
    "strategy": "how the two responses were generated",
    "model_a": "model that wrote response A",
    "model_b": "model that wrote response B",
    "votes": "how many labelers picked a, b, tie or both_bad",
    "labelers": "names of the labelers of this pair",
    "agreement": "share of this pair's labelers who picked the winning choice",
    "rewritten": "whether the chosen answer was rewritten by a labeler",
    "resolution": "how the row was decided: majority vote or a labeler's rewrite",
}


def dataset_stats(rows: list[dict[str, Any]], labels: list[Any], quality: dict[str, Any] | None) -> dict[str, Any]:
    """The numbers the card and the commit message state."""
    categories = Counter(str(row.get("category", "uncategorised")) for row in rows)
    labelers = {getattr(label, "labeler", None) for label in labels} - {None}
    strategies = Counter(str(row.get("strategy")) for row in rows if row.get("strategy"))
    models = sorted({str(row.get(key)) for row in rows for key in ("model_a", "model_b", "model") if row.get(key)})
    return {"rows": len(rows), "labels": len(labels), "labelers": len(labelers),
            "categories": dict(sorted(categories.items())), "strategies": dict(sorted(strategies.items())),
            "models": models, "agreement": _agreement(quality)}


def _agreement(quality: dict[str, Any] | None) -> dict[str, Any] | None:
    """Inter-labeler agreement from ``labeling.quality.quality_report``; None when no pair has two labelers."""
    report = (quality or {}).get("agreement") or {}
    if not report.get("pairs_with_overlap"):
        return None
    figures: dict[str, Any] = {"pairs labeled by 2+ people": report["pairs_with_overlap"]}
    if report.get("percent_agreement") is not None:
        figures["percent agreement"] = f"{100 * report['percent_agreement']:.1f}%"
    if report.get("kappa") is not None:
        figures[f"{report.get('method') or ''} kappa".strip()] = round(report["kappa"], 3)
    return figures


def dataset_card(repo_id: str, stats: dict[str, Any], columns: list[str], license_id: str) -> str:
    """README.md: YAML metadata (license, task categories, tags, configs) and what the dataset holds."""
    import yaml

    size = "n<1K" if stats["rows"] < 1000 else "1K<n<10K" if stats["rows"] < 10_000 else "10K<n<100K"
    metadata = {
        "license": license_id,
        "task_categories": ["text-generation"],
        "language": ["en"],
        "tags": ["dpo", "preference", "human-feedback", "safety", "alignment", "refusals", "trl"],
        "size_categories": [size],
        "pretty_name": repo_id.split("/", 1)[1],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}],
    }
    lines = ["---", yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True).strip(), "---", "",
             f"# {metadata['pretty_name']}", "",
             "Human preference labels for aligning a small chat model to refuse harmful requests gracefully and "
             "stay helpful, in TRL's conversational preference format (`prompt` / `chosen` / `rejected`), ready "
             "for `trl.DPOTrainer`.", "",
             "```python", "from datasets import load_dataset", "",
             f'dataset = load_dataset("{repo_id}", split="train")', "```", "",
             "## Contents", "",
             f"- Preference pairs: **{stats['rows']}**",
             f"- Labels behind them: {stats['labels']} from **{stats['labelers']}** labeler(s)"]
    agreement = stats.get("agreement")
    if agreement:
        lines.append("- Agreement: " + ", ".join(f"{key} = {_fmt(value)}" for key, value in agreement.items()))
    else:
        lines.append("- Agreement: not measured (no pair was labeled by two people)")
    lines.append(f"- Generating model(s): {', '.join(f'`{m}`' for m in stats['models']) or 'not recorded'}")
    if stats["strategies"]:
        lines.append("- Pair strategies: " + ", ".join(f"`{k}` ({v})" for k, v in stats["strategies"].items()))
    lines += ["", "| category | pairs |", "|---|---|"]
    lines += [f"| {name} | {count} |" for name, count in stats["categories"].items()]
    lines += ["", "## Columns", ""]
    lines += [f"- `{name}`: {COLUMN_HELP.get(name, 'metadata carried from the label store')}" for name in columns]
    lines += ["", "Raw label events (every pair, label and undo, append-only) are kept under `raw/` so a labeling "
              "app can restore its state from this repo; they are not part of the `train` split.", "",
              f"<!-- {STATS_MARKER}: {json.dumps({k: stats[k] for k in ('rows', 'labels', 'labelers')})} -->", ""]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def previous_stats(api: HfApi, repo_id: str, cache_dir: Path) -> dict[str, Any] | None:
    """The counts stated by the card already on the Hub, to say in the commit message what changed."""
    try:
        path = api.hf_hub_download(repo_id, "README.md", repo_type=REPO_TYPE, cache_dir=str(cache_dir))
        text = Path(path).read_text(encoding="utf-8")
    except Exception:  # noqa: BLE001 - no card yet (or unreadable): the push says "create"
        return None
    match = re.search(rf"<!-- {STATS_MARKER}: (\{{.*?\}}) -->", text)
    return json.loads(match.group(1)) if match else None


def commit_message(stats: dict[str, Any], before: dict[str, Any] | None, raw_events: int) -> str:
    def delta(key: str) -> str:
        if not before or key not in before:
            return ""
        change = stats[key] - int(before[key])
        return f" ({change:+d})"

    verb = "Update" if before else "Create"
    return (f"{verb} preference dataset: {stats['rows']} pairs{delta('rows')}, {stats['labels']} labels"
            f"{delta('labels')} from {stats['labelers']} labeler(s); raw events +{raw_events}")


# -- push -------------------------------------------------------------------------------------------------------

def _export(store: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from labeling.export import build_preference_rows
    from labeling.quality import quality_report

    rows = build_preference_rows(store)
    return rows, quality_report(rows, store.active_labels(kind="label"))


def rows_to_parquet(rows: list[dict[str, Any]]) -> bytes:
    import datasets

    buffer = io.BytesIO()
    datasets.Dataset.from_list(rows).to_parquet(buffer)
    return buffer.getvalue()


def push_dataset(store: Any, repo_id: str, token: str | None = None, *, private: bool = True,
                 license_id: str = "apache-2.0", include_raw: bool = True,
                 on_progress: Callable[[str], None] | None = None, event_log: EventLog | None = None) -> PushResult:
    """Push the exported preference dataset, its card and the raw label events to ``repo_id`` in one commit.

    ``store`` is a ``LabelStore`` (its ``data_dir`` holds the pending status and the raw event files). In the
    app, pass the running sync's ``event_log`` (``LabelSync.log``) so both write the same event file. Raises
    ``HubError``; when the Hub could not be reached ``error.pending`` is true and nothing local was touched.
    """
    from huggingface_hub import CommitOperationAdd

    from labeling.hub_sync import EventLog

    repo_id = validate_repo_id(repo_id)
    data_dir = Path(store.data_dir)
    token = resolve_token(token)
    say = on_progress or (lambda message: logger.info(message))
    rows, quality = _export(store)
    if not rows:
        raise HubError("bad_input", "There is nothing to push yet: no pair has a label that picks a better "
                                    "response. Label some pairs first.")
    log = event_log or EventLog(data_dir)
    new_events = log.append_new(store.iter_events())  # written locally before any network call
    api = make_api(token)
    try:
        require_write_access(api, repo_id, token)
        with hub_call(repo_id, token, f"create the dataset repo {repo_id}"):
            url = str(api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True))
        stats = dataset_stats(rows, store.active_labels(kind="label"), quality)
        before = previous_stats(api, repo_id, data_dir / "hub" / "cache")
        message = commit_message(stats, before, new_events)
        operations = [CommitOperationAdd(PARQUET_PATH, rows_to_parquet(rows)),
                      CommitOperationAdd("README.md", dataset_card(repo_id, stats, list(rows[0]), license_id)
                                         .encode("utf-8"))]
        raw_files = log.own_files() if include_raw else []
        operations += [CommitOperationAdd(f"{RAW_PREFIX}/{path.name}", path.read_bytes()) for path in raw_files]
        say(f"Pushing {stats['rows']} pairs to {repo_id}...")
        with hub_call(repo_id, token, f"push to {repo_id}"):
            info = api.create_commit(repo_id, operations, commit_message=message, repo_type=REPO_TYPE)
    except HubError as error:
        if error.kind == "unreachable":
            error.message += " Your labels are kept locally and the push is pending: push again when the Hub is " \
                             "reachable."
            error.args = (error.message,)
        record_failure(data_dir, repo_id, error)
        raise
    status = record_success(data_dir, repo_id, info.oid, message)
    log.mark_pushed(raw_files)
    say(f"Pushed to {repo_id}: {message}")
    return PushResult(repo_id, url, info.oid, message, len(rows), len(raw_files), status)


# -- pull -------------------------------------------------------------------------------------------------------

PROMPT_COLUMNS = ("prompt", "messages", "question", "instruction", "goal", "input", "text", "query")


def pull_dataset(repo_id: str, token: str | None = None, *, split: str = "train", revision: str | None = None,
                 cache_dir: str | Path | None = None, limit: int | None = None) -> PulledDataset:
    """Download a Hub dataset: a preference dataset (``chosen``/``rejected`` columns) or a set of prompts.

    Prompts come back as ``PromptRecord`` (source ``hub:<repo>``), taking ``category`` and ``intended_label``
    columns when present. Raises ``HubError`` with what to change when the repo or a usable column is missing.
    """
    import datasets
    from huggingface_hub import snapshot_download

    repo_id = validate_repo_id(repo_id)
    token = resolve_token(token)
    with hub_call(repo_id, token, f"download {repo_id}"):
        make_api(token).dataset_info(repo_id, revision=revision)  # fails fast, without retries, when unreachable
        folder = snapshot_download(repo_id, repo_type=REPO_TYPE, revision=revision, token=token or False,
                                   endpoint=hub_endpoint(), cache_dir=str(cache_dir) if cache_dir else None,
                                   ignore_patterns=[f"{RAW_PREFIX}/*", ".gitattributes"])
    try:
        # A local snapshot follows the card's `configs` like load_dataset(repo) does, without datasets' own
        # endpoint setting (read once at import) getting in the way.
        loaded = datasets.load_dataset(folder, split=split, cache_dir=str(cache_dir) if cache_dir else None)
    except ValueError as error:
        raise HubError("bad_input", f"{repo_id} has no split '{split}': {error}") from None
    except Exception as error:  # noqa: BLE001 - datasets raises many kinds for "no data files"
        raise HubError("bad_input", f"{repo_id} has no data files that datasets can read "
                                    f"({type(error).__name__}: {scrub(str(error), token)}).") from None
    if limit is not None:
        loaded = loaded.select(range(min(limit, len(loaded))))
    columns = set(loaded.column_names)
    if {"chosen", "rejected"} <= columns:
        return PulledDataset(repo_id, "preference", loaded)
    column = next((name for name in PROMPT_COLUMNS if name in columns), None)
    if column is None:
        raise HubError("bad_input", f"{repo_id} has neither chosen/rejected columns nor a prompt column (looked for "
                                    f"{', '.join(PROMPT_COLUMNS)}); its columns are {', '.join(sorted(columns))}.")
    prompts = []
    for row in loaded:
        value = row[column]
        if not value:
            continue
        messages = as_messages(value if isinstance(value, (str, list)) else str(value))
        prompts.append(PromptRecord(messages=messages, category=str(row.get("category") or "uncategorised"),
                                    intended_label=row.get("intended_label") or None, source=f"hub:{repo_id}"))
    return PulledDataset(repo_id, "prompts", loaded, prompts)


# -- command line -----------------------------------------------------------------------------------------------

def _open_store(data_dir: str) -> Any:
    from labeling.store import LabelStore

    if not Path(data_dir).is_dir():
        raise HubError("bad_input", f"Data dir {data_dir} does not exist: pass the --data-dir the app labels into.")
    return LabelStore(data_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labeling.hub", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    push = commands.add_parser("push", help="push the preference dataset, its card and the raw labels")
    push.add_argument("--data-dir", required=True)
    push.add_argument("--repo", required=True, help="OWNER/NAME of the dataset repo")
    push.add_argument("--public", action="store_true", help="create the repo public (default: private)")
    push.add_argument("--license", default="apache-2.0", help="license id for the card (default: apache-2.0)")
    push.add_argument("--no-raw", action="store_true", help="leave the raw label events out")
    pull = commands.add_parser("pull", help="download a preference or prompt dataset")
    pull.add_argument("--repo", required=True)
    pull.add_argument("--split", default="train")
    pull.add_argument("--out", help="write the rows as JSONL here (default: print a summary only)")
    restore = commands.add_parser("restore", help="import the raw labels of a repo into a data dir")
    restore.add_argument("--data-dir", required=True)
    restore.add_argument("--repo", required=True)
    status = commands.add_parser("status", help="show whether a push is pending")
    status.add_argument("--data-dir", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "push":
            result = push_dataset(_open_store(args.data_dir), args.repo, private=not args.public,
                                  license_id=args.license, include_raw=not args.no_raw, on_progress=print)
            print(f"{result.url}\n{result.commit_message}")
        elif args.command == "pull":
            pulled = pull_dataset(args.repo, split=args.split)
            print(f"{args.repo}: {len(pulled.dataset)} rows ({pulled.kind}), columns "
                  f"{', '.join(pulled.dataset.column_names)}")
            if args.out:
                pulled.dataset.to_json(args.out, lines=True, force_ascii=False)
                print(f"Wrote {args.out}")
        elif args.command == "restore":
            from labeling.hub_sync import restore_from_hub

            Path(args.data_dir).mkdir(parents=True, exist_ok=True)
            print(restore_from_hub(_open_store(args.data_dir), args.repo).describe())
        else:
            print(read_status(args.data_dir).describe())
    except HubError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
