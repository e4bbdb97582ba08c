"""Continuous backup of the raw labels to a Hub dataset repo while people label, and restore at startup.

Each process appends the store's events (pairs, labels, retractions; see ``LabelStore.iter_events``) that it
has not written yet to its own file, ``<data_dir>/sync/events-<process>.jsonl``, and uploads its files to the
repo under ``raw/`` every ``interval_minutes`` (default 5) and once more when it stops. Files are append-only
and named per process, so two replicas never overwrite each other, and a re-sent file is the same file: a push
cut off half-way is simply sent again. A Space restart therefore loses at most one interval of labels.

At startup, ``restore_from_hub`` downloads every ``raw/*.jsonl`` of the repo into ``<data_dir>/sync/restored/``
and imports them into the store; import is idempotent, so restoring twice adds nothing, and the restored events
count as written, so this process does not upload them again.

This is the app's side (``python app.py --hub-repo OWNER/NAME``); from the command line, ``python -m
labeling.hub restore --data-dir D --repo OWNER/NAME`` restores and ``python -m labeling.hub push`` pushes.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labeling.hub import (
    RAW_PREFIX,
    REPO_TYPE,
    HubError,
    HubStatus,
    hub_call,
    hub_endpoint,
    make_api,
    read_status,
    record_failure,
    record_success,
    require_write_access,
    resolve_token,
    validate_repo_id,
)

logger = logging.getLogger(__name__)

SYNC_DIR = "sync"
RESTORED_DIR = "restored"
MIN_INTERVAL_MINUTES = 0.01  # tests use sub-second intervals; the app's default is 5 minutes
SEGMENT_BYTES = 4 * 1024 * 1024  # a full segment never changes again, so later pushes skip it


def event_key(event: dict[str, Any]) -> str:
    return f"{event.get('type')}:{event.get('id') or event.get('pair_id') or event.get('label_id')}"


def process_name() -> str:
    """A file-name-safe id unique to this process run: on a restarted Space the pid alone repeats."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:24] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class EventLog:
    """The append-only event files of one data dir: this process's own files, earlier processes', restored ones.

    The high-water mark is the set of event keys already in any of these files, read once from disk. A process
    writes ``events-<process>-<segment>.jsonl`` and starts a new segment past ``segment_bytes``.
    """

    def __init__(self, data_dir: str | Path, process: str | None = None, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.folder = Path(data_dir) / SYNC_DIR
        self.restored_folder = self.folder / RESTORED_DIR
        self.process = process or process_name()
        self.segment_bytes = segment_bytes
        self.segment = 0
        self.lock = threading.Lock()
        self._known: set[str] | None = None
        self._pushed_sizes: dict[str, int] = {}
        self.written: Counter[str] = Counter()  # events this object appended, by type ("pair" / "label")

    def _load_known(self) -> set[str]:
        known: set[str] = set()
        for path in [*self.folder.glob("events-*.jsonl"), *self.restored_folder.glob("*.jsonl")]:
            for event in read_events(path):
                known.add(event_key(event))
        return known

    def append_new(self, events: Iterable[dict[str, Any]]) -> int:
        """Append the events not written yet to this process's file (flushed and fsynced); returns how many."""
        with self.lock:
            if self._known is None:
                self._known = self._load_known()
            fresh = [event for event in events if event_key(event) not in self._known]
            if not fresh:
                return 0
            self.folder.mkdir(parents=True, exist_ok=True)
            if self.path.exists() and self.path.stat().st_size >= self.segment_bytes:
                self.segment += 1
            with self.path.open("a", encoding="utf-8") as handle:
                for event in fresh:
                    handle.write(json.dumps(event, ensure_ascii=False, sort_keys=True) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            self._known.update(event_key(event) for event in fresh)
            self.written.update(str(event.get("type")) for event in fresh)
            return len(fresh)

    @property
    def path(self) -> Path:
        """The file this process appends to now."""
        return self.folder / f"events-{self.process}-{self.segment:04d}.jsonl"

    def mark_known(self, events: Iterable[dict[str, Any]]) -> None:
        with self.lock:
            if self._known is None:
                self._known = self._load_known()
            self._known.update(event_key(event) for event in events)

    def own_files(self) -> list[Path]:
        """Files written by processes on this data dir (uploaded); restored copies of others' files are not."""
        return sorted(path for path in self.folder.glob("events-*.jsonl") if path.is_file())

    def changed_files(self) -> list[Path]:
        return [path for path in self.own_files() if self._pushed_sizes.get(path.name) != path.stat().st_size]

    def snapshot(self, paths: list[Path]) -> dict[Path, bytes]:
        """File contents read under the lock, so no half-written line goes out."""
        with self.lock:
            return {path: path.read_bytes() for path in paths}

    def mark_pushed(self, paths: Iterable[Path], sizes: dict[Path, int] | None = None) -> None:
        for path in paths:
            self._pushed_sizes[path.name] = sizes[path] if sizes else path.stat().st_size


def read_events(path: Path) -> list[dict[str, Any]]:
    """Events of one JSONL file; a line that is not complete JSON (a cut-off write) is skipped."""
    events = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return events
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            logger.warning("Skipped an unreadable line in %s", path.name)
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


# -- restore ----------------------------------------------------------------------------------------------------

@dataclass
class RestoreResult:
    repo_id: str
    found: bool  # False: the repo does not exist yet (a new project) or cannot be seen; nothing to restore
    files: int = 0
    events: int = 0
    pairs_added: int = 0
    labels_added: int = 0
    skipped_lines: int = 0

    def describe(self) -> str:
        if not self.found:
            return (f"{self.repo_id} was not found (a new repo, or a private one this token cannot see); starting "
                    "from the local data.")
        return (f"Restored from {self.repo_id}: {self.pairs_added} new pairs and {self.labels_added} new labels "
                f"({self.events} events in {self.files} files).")


def restore_from_hub(store: Any, repo_id: str, token: str | None = None) -> RestoreResult:
    """Import the raw label events already in ``repo_id`` into ``store``; safe to call at every startup.

    A repo that does not exist yet restores nothing (``found=False``). Raises ``HubError`` for a token that is
    refused or a Hub that cannot be reached, so the app can say so and carry on with the local data.
    """
    from huggingface_hub import snapshot_download

    repo_id = validate_repo_id(repo_id)
    token = resolve_token(token)
    log = EventLog(store.data_dir)
    api = make_api(token)
    try:
        with hub_call(repo_id, token, f"read the raw labels of {repo_id}"):
            # dataset_info makes one request without retries, so a Hub that is down is reported at once.
            siblings = api.dataset_info(repo_id).siblings or []
        files = [sibling.rfilename for sibling in siblings
                 if sibling.rfilename.startswith(f"{RAW_PREFIX}/") and sibling.rfilename.endswith(".jsonl")]
    except HubError as error:
        if error.kind == "not_found":
            return RestoreResult(repo_id, found=False)
        raise
    if not files:
        return RestoreResult(repo_id, found=True)
    with hub_call(repo_id, token, f"download the raw labels of {repo_id}"):
        folder = Path(snapshot_download(repo_id, repo_type=REPO_TYPE, token=token or False, endpoint=hub_endpoint(),
                                        allow_patterns=[f"{RAW_PREFIX}/*.jsonl"],
                                        cache_dir=str(Path(store.data_dir) / SYNC_DIR / ".cache")))
    log.restored_folder.mkdir(parents=True, exist_ok=True)
    events: list[dict[str, Any]] = []
    skipped = 0
    for name in files:
        source = folder / name
        raw_lines = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
        file_events = read_events(source)
        skipped += len(raw_lines) - len(file_events)
        events.extend(file_events)
        (log.restored_folder / Path(name).name).write_bytes(source.read_bytes())
    # Pairs before labels, all files in one import: a label may sit in another process's file than its pair.
    events.sort(key=lambda event: 0 if event.get("type") == "pair" else 1)
    try:
        pairs_added, labels_added = store.import_events(events)
    except ValueError as error:  # LabelError: the import is all or nothing, so the store is unchanged
        raise HubError("bad_input", f"The raw labels in {repo_id} could not be imported, so nothing was: {error} "
                                    "Check the raw/ files of that repo, or start with another --hub-repo.") from None
    log.mark_known(events)
    result = RestoreResult(repo_id, True, len(files), len(events), pairs_added, labels_added, skipped)
    logger.info(result.describe())
    return result


# -- continuous sync --------------------------------------------------------------------------------------------

@dataclass
class LabelSync:
    """Background uploader of one store's raw events; ``stop()`` makes the last push. Build with ``start_sync``."""

    store: Any
    repo_id: str
    interval_minutes: float = 5.0
    token: str | None = field(default=None, repr=False)
    private: bool = True

    def __post_init__(self) -> None:
        self.repo_id = validate_repo_id(self.repo_id)
        if not isinstance(self.interval_minutes, (int, float)) or self.interval_minutes < MIN_INTERVAL_MINUTES:
            raise HubError("bad_input", f"interval_minutes must be a number of minutes >= {MIN_INTERVAL_MINUTES}, "
                                        f"got {self.interval_minutes!r}; the default is 5.")
        self.token = resolve_token(self.token)
        self.endpoint = hub_endpoint()  # fixed at start: the last push at exit goes where the others went
        self.data_dir = Path(self.store.data_dir)
        self.log = EventLog(self.data_dir)
        self._stop = threading.Event()
        self._push_lock = threading.Lock()
        self._repo_ready = False
        self._unpushed: Counter[str] = Counter()  # new events by type since the last successful push
        self._thread: threading.Thread | None = None
        self.pushes = 0

    def start(self) -> LabelSync:
        self._thread = threading.Thread(target=self._run, name=f"label-sync-{self.repo_id}", daemon=True)
        self._thread.start()
        atexit.register(self._at_exit)
        return self

    @property
    def status(self) -> HubStatus:
        return read_status(self.data_dir)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_minutes * 60):
            self.push_now()

    def push_now(self) -> HubStatus:
        """Write new events locally, then upload the changed event files. Never raises: failures leave the data
        local and the status pending, with the reason in words."""
        with self._push_lock:
            try:
                before = self.log.written.copy()
                self.log.append_new(self.store.iter_events())
                self._unpushed.update(self.log.written - before)
                changed = self.log.changed_files()
                if not changed:
                    return self.status
                self._push(changed)
            except HubError as error:
                status = record_failure(self.data_dir, self.repo_id, error)
                logger.warning("Label sync to %s pending: %s", self.repo_id, error.message)
                return status
            except Exception as error:  # noqa: BLE001 - the sync thread must outlive any surprise
                message = f"{type(error).__name__} while syncing labels"
                logger.warning("Label sync to %s pending: %s", self.repo_id, message)
                return record_failure(self.data_dir, self.repo_id, HubError("hub_error", message))
            return self.status

    def _push(self, changed: list[Path]) -> None:
        from huggingface_hub import CommitOperationAdd

        api = make_api(self.token, self.endpoint)
        if not self._repo_ready:
            require_write_access(api, self.repo_id, self.token)
            with hub_call(self.repo_id, self.token, f"create the dataset repo {self.repo_id}"):
                api.create_repo(self.repo_id, repo_type=REPO_TYPE, private=self.private, exist_ok=True)
            self._repo_ready = True
        else:
            # One request without retries first: with the Hub down, the upload's own retries would hold a
            # shutdown for half a minute.
            with hub_call(self.repo_id, self.token, f"sync labels to {self.repo_id}"):
                api.dataset_info(self.repo_id)
        contents = self.log.snapshot(changed)
        lines = sum(content.count(b"\n") for content in contents.values())
        new = self._unpushed
        message = (f"Sync raw labels: +{new['pair']} pair(s), +{new['label']} label event(s) from process "
                   f"{self.log.process} ({lines} events in {len(contents)} file(s))")
        operations = [CommitOperationAdd(f"{RAW_PREFIX}/{path.name}", content) for path, content in contents.items()]
        with hub_call(self.repo_id, self.token, f"sync labels to {self.repo_id}"):
            info = api.create_commit(self.repo_id, operations, commit_message=message, repo_type=REPO_TYPE)
        self.log.mark_pushed(contents, {path: len(content) for path, content in contents.items()})
        record_success(self.data_dir, self.repo_id, info.oid, message)
        self._unpushed = Counter()
        self.pushes += 1

    def stop(self, timeout: float = 60.0) -> HubStatus:
        """Stop the timer and make the last push (the app calls this at shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        atexit.unregister(self._at_exit)
        return self.push_now()

    def _at_exit(self) -> None:
        if not self._stop.is_set():
            self.stop()


def start_sync(store: Any, repo_id: str, interval_minutes: float = 5, token: str | None = None,
               private: bool = True) -> LabelSync:
    """Start uploading ``store``'s raw events to ``repo_id`` every ``interval_minutes``; call ``.stop()`` at
    shutdown for the last push. Problems (no token, Hub down) do not raise: they show in ``.status``."""
    return LabelSync(store, repo_id, interval_minutes, token, private).start()
