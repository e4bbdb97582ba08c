"""The durable label store: response pairs, labels, leases and small settings in one SQLite file.

Labels are people's time, so the store is built so that none is lost, counted twice or credited to the wrong
person:

- One file, ``<data_dir>/labels.sqlite``, in WAL mode with ``synchronous=FULL``: once a write method returns,
  the data is on disk and survives the process being killed.
- Every write runs in one ``BEGIN IMMEDIATE`` transaction, so many threads and processes can share the file;
  each thread gets its own connection and waits (``busy_timeout``) rather than failing when another writes.
- Labels are append-only (triggers refuse UPDATE and DELETE). Undo appends a retraction that names the label it
  takes back; the full history stays readable through :meth:`LabelStore.all_events`.
- ``label_id`` and ``pair_id`` are primary keys, so a re-submitted label or re-imported event is stored once.
- The schema is versioned with ``PRAGMA user_version``; :data:`MIGRATIONS` upgrades older files in place.

See docs/LABELING.md for the data model and the guarantees in full.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from labeling.records import CHOICES, LabelRecord, PairRecord, prompt_key

DB_FILENAME = "labels.sqlite"
MAX_LABELER_LENGTH = 64
LABEL_KINDS: tuple[str, ...] = ("label", "vote")
BUSY_TIMEOUT_MS = 60_000
# Pairs made for blind comparison are voted on in the Compare tab, never handed out by the Label tab: their
# votes carry kind "vote" and they would otherwise sit in every labeler's queue as unlabeled work.
VOTE_ONLY_STRATEGIES: tuple[str, ...] = ("compare",)
_LABEL_TAB_PAIRS = "p.strategy NOT IN (" + ", ".join(f"'{s}'" for s in VOTE_ONLY_STRATEGIES) + ")"


class LabelError(ValueError):
    """A label, pair or setting the store refuses, with a message saying what to change."""


@dataclass
class Assignment:
    """A pair handed to one labeler, with the stored response shown on the left and when the lease ends."""

    pair: PairRecord
    left: str  # "a" or "b"
    lease_expires: float


def validate_labeler(name: Any) -> str:
    """Return the labeler name stripped of surrounding whitespace, or raise LabelError saying what is wrong.

    Names are otherwise kept exactly as typed (they may contain HTML; whoever displays them escapes them).
    """
    if not isinstance(name, str):
        raise LabelError(f"Labeler name must be text, got {type(name).__name__}. Type your name in the name box.")
    stripped = name.strip()
    if not stripped:
        raise LabelError("Labeler name is empty. Type your name (up to 64 characters) before labeling.")
    if len(stripped) > MAX_LABELER_LENGTH:
        raise LabelError(
            f"Labeler name is {len(stripped)} characters long; use at most {MAX_LABELER_LENGTH}."
        )
    bad = [ch for ch in stripped if unicodedata.category(ch) in ("Cc", "Zl", "Zp")]
    if bad:
        raise LabelError(
            f"Labeler name contains control characters ({', '.join(repr(c) for c in bad[:3])}); "
            "use letters, digits, spaces and punctuation only."
        )
    return stripped


def db_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / DB_FILENAME


# ---------------------------------------------------------------------------------------------------------
# Schema and migrations. Each migration takes a connection inside an open transaction and brings the schema
# from the previous version to its own. Never edit a released migration; append a new one.
# ---------------------------------------------------------------------------------------------------------

def _migrate_v1(conn: sqlite3.Connection) -> None:
    """The first released schema: pairs as JSON documents and a plain label table."""
    conn.execute(
        "CREATE TABLE pairs (pair_id TEXT PRIMARY KEY, data TEXT NOT NULL, created_at REAL NOT NULL)"
    )
    conn.execute(
        "CREATE TABLE labels (label_id TEXT PRIMARY KEY, pair_id TEXT NOT NULL REFERENCES pairs(pair_id), "
        "labeler TEXT NOT NULL, choice TEXT NOT NULL, left_side TEXT NOT NULL, rewrite TEXT, "
        "created_at REAL NOT NULL)"
    )


def _migrate_v2(conn: sqlite3.Connection) -> None:
    """Retractions, kinds and comments on labels; indexed pair columns; leases; settings; append-only guard."""
    # Pairs: keep the JSON document, add the columns we filter and resume on, and an insertion order.
    conn.execute(
        "CREATE TABLE pairs_v2 (seq INTEGER PRIMARY KEY AUTOINCREMENT, pair_id TEXT NOT NULL UNIQUE, "
        "prompt_key TEXT NOT NULL, category TEXT NOT NULL, intended_label TEXT, strategy TEXT NOT NULL, "
        "model_a TEXT NOT NULL, model_b TEXT NOT NULL, created_at REAL NOT NULL, data TEXT NOT NULL)"
    )
    for pair_id, data, created_at in conn.execute("SELECT pair_id, data, created_at FROM pairs ORDER BY rowid"):
        doc = json.loads(data)
        conn.execute(
            "INSERT INTO pairs_v2 (pair_id, prompt_key, category, intended_label, strategy, model_a, model_b, "
            "created_at, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (pair_id, prompt_key(doc.get("prompt", [])), doc.get("category", "uncategorised"),
             doc.get("intended_label"), doc.get("strategy", ""), doc.get("model_a", ""), doc.get("model_b", ""),
             created_at, data),
        )
    # Labels: a sequence number gives a total order (client clocks disagree), plus kind/comment/retracts.
    conn.execute(
        "CREATE TABLE labels_v2 (seq INTEGER PRIMARY KEY AUTOINCREMENT, label_id TEXT NOT NULL UNIQUE, "
        "pair_id TEXT NOT NULL REFERENCES pairs_v2(pair_id), labeler TEXT NOT NULL, choice TEXT NOT NULL, "
        "left_side TEXT NOT NULL, rewrite TEXT, comment TEXT, kind TEXT NOT NULL DEFAULT 'label', "
        "retracts TEXT, created_at REAL NOT NULL, stored_at REAL NOT NULL)"
    )
    conn.execute(
        "INSERT INTO labels_v2 (label_id, pair_id, labeler, choice, left_side, rewrite, comment, kind, "
        "retracts, created_at, stored_at) SELECT label_id, pair_id, labeler, choice, left_side, rewrite, NULL, "
        "'label', NULL, created_at, created_at FROM labels ORDER BY rowid"
    )
    conn.execute("DROP TABLE labels")
    conn.execute("DROP TABLE pairs")
    conn.execute("ALTER TABLE pairs_v2 RENAME TO pairs")
    conn.execute("ALTER TABLE labels_v2 RENAME TO labels")
    conn.execute("CREATE INDEX pairs_by_prompt ON pairs(strategy, model_a, model_b, prompt_key)")
    conn.execute("CREATE INDEX pairs_by_category ON pairs(category)")
    conn.execute("CREATE INDEX labels_by_pair ON labels(pair_id)")
    conn.execute("CREATE INDEX labels_by_labeler ON labels(labeler)")
    conn.execute("CREATE INDEX labels_by_retracts ON labels(retracts)")
    conn.execute(
        "CREATE TRIGGER labels_no_update BEFORE UPDATE ON labels "
        "BEGIN SELECT RAISE(ABORT, 'labels are append-only'); END"
    )
    conn.execute(
        "CREATE TRIGGER labels_no_delete BEFORE DELETE ON labels "
        "BEGIN SELECT RAISE(ABORT, 'labels are append-only'); END"
    )
    conn.execute(
        "CREATE VIEW active_labels AS SELECT * FROM labels AS l WHERE l.retracts IS NULL "
        "AND NOT EXISTS (SELECT 1 FROM labels AS r WHERE r.retracts = l.label_id)"
    )
    # Leases are working state, not history: rows are replaced and deleted freely.
    conn.execute(
        "CREATE TABLE leases (pair_id TEXT NOT NULL REFERENCES pairs(pair_id), labeler TEXT NOT NULL, "
        "left_side TEXT NOT NULL, expires REAL NOT NULL, skipped INTEGER NOT NULL DEFAULT 0, "
        "PRIMARY KEY (pair_id, labeler))"
    )
    conn.execute("CREATE INDEX leases_by_labeler ON leases(labeler, expires)")
    conn.execute("CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_migrate_v1, _migrate_v2)
SCHEMA_VERSION = len(MIGRATIONS)

_LABEL_COLUMNS = ("label_id", "pair_id", "labeler", "choice", "left_side", "rewrite", "comment", "kind",
                  "retracts", "created_at")
_PAIR_FIELDS = tuple(f.name for f in fields(PairRecord))
_LABEL_FIELDS = tuple(f.name for f in fields(LabelRecord))


def _pair_from_json(data: str) -> PairRecord:
    doc = json.loads(data)
    return PairRecord(**{k: v for k, v in doc.items() if k in _PAIR_FIELDS})


def _label_from_row(row: sqlite3.Row | tuple) -> LabelRecord:
    label_id, pair_id, labeler, choice, left, rewrite, comment, kind, retracts, created_at = row
    return LabelRecord(pair_id=pair_id, labeler=labeler, choice=choice, left=left, rewrite=rewrite,
                       comment=comment, kind=kind, retracts=retracts, created_at=created_at, label_id=label_id)


class LabelStore:
    """All pairs and labels of one data directory. Safe to share between threads; several processes may open
    the same directory at once."""

    def __init__(self, data_dir: str | Path, k: int = 1, lease_seconds: int = 600) -> None:
        self.data_dir = Path(data_dir)
        self.path = db_path(self.data_dir)
        self.k = self._check_k(k)
        if not isinstance(lease_seconds, (int, float)) or lease_seconds <= 0:
            raise LabelError(f"lease_seconds must be a positive number of seconds, got {lease_seconds!r}.")
        self.lease_seconds = lease_seconds
        self._local = threading.local()
        self._rng = random.SystemRandom()
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LabelError(f"Cannot create the data folder {self.data_dir}: {exc}. Pick a writable folder.") from exc
        self._migrate()

    # -- connections and transactions ------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        # A connection must not cross a fork: SQLite's locks belong to the process that opened it.
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            try:
                conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
                conn.execute("PRAGMA foreign_keys = ON")
            except sqlite3.DatabaseError as exc:
                raise LabelError(
                    f"Cannot open the label store {self.path}: {exc}. If the file is damaged, restore it from a "
                    "backup or the Hub sync; it was not changed."
                ) from exc
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front so concurrent writers queue instead of deadlocking."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot across several SELECTs."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection (other threads' connections close when their threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _migrate(self) -> None:
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise LabelError(
                    f"The label store {self.path} has schema version {version}, newer than this code's "
                    f"{SCHEMA_VERSION}. Update the app before opening it; nothing was changed."
                )
            for number in range(version + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[number - 1](conn)
                conn.execute(f"PRAGMA user_version = {number}")

    def schema_version(self) -> int:
        return self._conn().execute("PRAGMA user_version").fetchone()[0]

    # -- pairs ---------------------------------------------------------------------------------------------

    @staticmethod
    def _check_pair(pair: Any) -> None:
        if not isinstance(pair, PairRecord):
            raise LabelError(f"Expected a PairRecord, got {type(pair).__name__}.")
        if not isinstance(pair.prompt, list) or not pair.prompt:
            raise LabelError(f"Pair {pair.pair_id}: the prompt must be a non-empty list of messages.")
        for side in ("response_a", "response_b"):
            if not isinstance(getattr(pair, side), str):
                raise LabelError(f"Pair {pair.pair_id}: {side} must be text.")

    @staticmethod
    def _insert_pair(conn: sqlite3.Connection, pair: PairRecord) -> bool:
        cursor = conn.execute(
            "INSERT OR IGNORE INTO pairs (pair_id, prompt_key, category, intended_label, strategy, model_a, "
            "model_b, created_at, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (pair.pair_id, pair.prompt_key, pair.category, pair.intended_label, pair.strategy, pair.model_a,
             pair.model_b, pair.created_at, json.dumps(pair.to_dict(), ensure_ascii=False)),
        )
        return cursor.rowcount == 1

    def add_pairs(self, pairs: list[PairRecord]) -> int:
        """Store pairs in one transaction; pairs whose pair_id is already stored are skipped. Returns how many
        were new."""
        pairs = list(pairs)
        for pair in pairs:
            self._check_pair(pair)
        with self._write() as conn:
            return sum(self._insert_pair(conn, pair) for pair in pairs)

    def get_pair(self, pair_id: str) -> PairRecord | None:
        row = self._conn().execute("SELECT data FROM pairs WHERE pair_id = ?", (pair_id,)).fetchone()
        return _pair_from_json(row[0]) if row else None

    def list_pairs(self, category: str | None = None, limit: int | None = None) -> list[PairRecord]:
        sql, args = "SELECT data FROM pairs", []
        if category is not None:
            sql += " WHERE category = ?"
            args.append(category)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [_pair_from_json(row[0]) for row in self._conn().execute(sql, args)]

    def paired_prompt_keys(self, strategy: str, model: str) -> set[str]:
        """Prompt keys already paired with this strategy where ``model`` produced either side (for resuming)."""
        rows = self._conn().execute(
            "SELECT DISTINCT prompt_key FROM pairs WHERE strategy = ? AND (model_a = ? OR model_b = ?)",
            (strategy, model, model),
        )
        return {row[0] for row in rows}

    def count_pairs(self) -> int:
        return self._conn().execute("SELECT count(*) FROM pairs").fetchone()[0]

    # -- labeling ------------------------------------------------------------------------------------------

    def next_pair(self, labeler: str, now: float | None = None) -> Assignment | None:
        """Lease the next pair for ``labeler``, or None when nothing is left for them.

        A labeler's live lease is returned again (same side on the left, lease extended), so reloading the page
        shows the same pair. Otherwise the pair is one they have no active label for, with fewer than k active
        labels plus live leases by others; pairs they skipped come last, then pairs closest to k (so overlap
        for agreement builds up), then the oldest. Pairs of :data:`VOTE_ONLY_STRATEGIES` (blind compare) are
        never handed out.
        """
        labeler = validate_labeler(labeler)
        now = time.time() if now is None else float(now)
        expires = now + self.lease_seconds
        with self._write() as conn:
            mine_active = "SELECT pair_id FROM active_labels WHERE labeler = :me AND kind = 'label'"
            row = conn.execute(
                f"SELECT pair_id, left_side FROM leases WHERE labeler = :me AND expires > :now "
                f"AND pair_id NOT IN ({mine_active}) ORDER BY expires DESC LIMIT 1",
                {"me": labeler, "now": now},
            ).fetchone()
            if row is None:
                row = conn.execute(
                    f"""
                    SELECT p.pair_id, l.left_side FROM pairs AS p
                    LEFT JOIN (SELECT pair_id, count(*) AS n FROM active_labels WHERE kind = 'label'
                               GROUP BY pair_id) AS a ON a.pair_id = p.pair_id
                    LEFT JOIN (SELECT pair_id, count(*) AS n FROM leases
                               WHERE labeler <> :me AND expires > :now GROUP BY pair_id) AS h
                           ON h.pair_id = p.pair_id
                    LEFT JOIN leases AS l ON l.pair_id = p.pair_id AND l.labeler = :me
                    WHERE p.pair_id NOT IN ({mine_active}) AND {_LABEL_TAB_PAIRS}
                      AND coalesce(a.n, 0) + coalesce(h.n, 0) < :k
                    ORDER BY coalesce(l.skipped, 0), coalesce(a.n, 0) DESC, p.seq
                    LIMIT 1
                    """,
                    {"me": labeler, "now": now, "k": self.k},
                ).fetchone()
                if row is None:
                    return None
            pair_id, left = row
            # The side is drawn once per (labeler, pair) and kept in the lease row, so it is stable.
            left = left or self._rng.choice(("a", "b"))
            conn.execute(
                "INSERT INTO leases (pair_id, labeler, left_side, expires, skipped) VALUES (?, ?, ?, ?, 0) "
                "ON CONFLICT (pair_id, labeler) DO UPDATE SET expires = excluded.expires, skipped = 0",
                (pair_id, labeler, left, expires),
            )
            data = conn.execute("SELECT data FROM pairs WHERE pair_id = ?", (pair_id,)).fetchone()[0]
        return Assignment(pair=_pair_from_json(data), left=left, lease_expires=expires)

    @staticmethod
    def _check_label(label: Any) -> LabelRecord:
        if not isinstance(label, LabelRecord):
            raise LabelError(f"Expected a LabelRecord, got {type(label).__name__}.")
        label.labeler = validate_labeler(label.labeler)
        if not isinstance(label.label_id, str) or not label.label_id.strip():
            raise LabelError("label_id is empty; leave it unset to get a fresh one.")
        if label.left not in ("a", "b"):
            raise LabelError(f"left must be 'a' or 'b', got {label.left!r}.")
        if label.kind not in LABEL_KINDS:
            raise LabelError(f"kind {label.kind!r} is not one of {', '.join(LABEL_KINDS)}.")
        if label.retracts is None and label.choice not in CHOICES:
            raise LabelError(f"choice {label.choice!r} is not one of {', '.join(CHOICES)}.")
        for name in ("rewrite", "comment"):
            value = getattr(label, name)
            if value is not None and not isinstance(value, str):
                raise LabelError(f"{name} must be text or empty, got {type(value).__name__}.")
            if isinstance(value, str) and not value.strip():
                setattr(label, name, None)  # a blank rewrite box is no rewrite
        if not isinstance(label.created_at, (int, float)):
            raise LabelError(f"created_at must be a timestamp, got {label.created_at!r}.")
        return label

    @staticmethod
    def _insert_label(conn: sqlite3.Connection, label: LabelRecord) -> bool:
        cursor = conn.execute(
            f"INSERT OR IGNORE INTO labels ({', '.join(_LABEL_COLUMNS)}, stored_at) "
            f"VALUES ({', '.join('?' * len(_LABEL_COLUMNS))}, ?)",
            (label.label_id, label.pair_id, label.labeler, label.choice, label.left, label.rewrite, label.comment,
             label.kind, label.retracts, label.created_at, time.time()),
        )
        return cursor.rowcount == 1

    def _same_label(self, conn: sqlite3.Connection, label: LabelRecord) -> None:
        """A re-submitted label_id must be the same label; a different one under that id is refused."""
        row = conn.execute(
            "SELECT pair_id, labeler, choice FROM labels WHERE label_id = ?", (label.label_id,)
        ).fetchone()
        if row is not None and tuple(row) != (label.pair_id, label.labeler, label.choice):
            raise LabelError(
                f"label_id {label.label_id} is already stored for a different label "
                f"({row[1]!r} chose {row[2]!r} on pair {row[0]}); give the new label a fresh label_id."
            )

    def record_label(self, label: LabelRecord) -> bool:
        """Store a label and release the labeler's lease on its pair. Returns False when this label_id is
        already stored (a re-submission), True when it was new.

        If the labeler already has an active label of the same kind on this pair (two tabs open, say), the new
        one replaces it: a retraction of the old label is appended in the same transaction, so each person
        counts once per pair.
        """
        label = self._check_label(label)
        if label.retracts is not None:
            raise LabelError("record_label stores labels, not retractions; use undo_last to take a label back.")
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM pairs WHERE pair_id = ?", (label.pair_id,)).fetchone() is None:
                raise LabelError(
                    f"Pair {label.pair_id!r} is not in the label store, so the label was not saved. "
                    "Reload the page to get a current pair."
                )
            self._same_label(conn, label)
            if not self._insert_label(conn, label):
                return False
            earlier = conn.execute(
                "SELECT label_id FROM active_labels WHERE pair_id = ? AND labeler = ? AND kind = ? "
                "AND label_id <> ?",
                (label.pair_id, label.labeler, label.kind, label.label_id),
            ).fetchall()
            for (old_id,) in earlier:
                self._insert_label(conn, self._retraction_of(conn, old_id, label.created_at,
                                                             comment="replaced by a newer label"))
            conn.execute("DELETE FROM leases WHERE pair_id = ? AND labeler = ?", (label.pair_id, label.labeler))
        return True

    @staticmethod
    def _retraction_of(conn: sqlite3.Connection, label_id: str, when: float, comment: str) -> LabelRecord:
        row = conn.execute(f"SELECT {', '.join(_LABEL_COLUMNS)} FROM labels WHERE label_id = ?", (label_id,)).fetchone()
        original = _label_from_row(row)
        return LabelRecord(pair_id=original.pair_id, labeler=original.labeler, choice=original.choice,
                           left=original.left, kind=original.kind, retracts=original.label_id, comment=comment,
                           created_at=when)

    def undo_last(self, labeler: str, kind: str = "label") -> LabelRecord | None:
        """Take back the labeler's most recent active label by appending a retraction. Returns the retracted
        label (None when there is nothing to undo). The pair is leased back to them with the same side on the
        left, so the next :meth:`next_pair` shows it again for relabeling."""
        labeler = validate_labeler(labeler)
        now = time.time()
        with self._write() as conn:
            row = conn.execute(
                f"SELECT {', '.join(_LABEL_COLUMNS)} FROM active_labels WHERE labeler = ? AND kind = ? "
                "ORDER BY seq DESC LIMIT 1",
                (labeler, kind),
            ).fetchone()
            if row is None:
                return None
            original = _label_from_row(row)
            self._insert_label(conn, self._retraction_of(conn, original.label_id, now, comment="undo"))
            if kind == "label":
                conn.execute(
                    "INSERT INTO leases (pair_id, labeler, left_side, expires, skipped) VALUES (?, ?, ?, ?, 0) "
                    "ON CONFLICT (pair_id, labeler) DO UPDATE SET left_side = excluded.left_side, "
                    "expires = excluded.expires, skipped = 0",
                    (original.pair_id, labeler, original.left, now + self.lease_seconds),
                )
        return original

    def release(self, labeler: str, pair_id: str) -> None:
        """Skip: give the lease back so others can take the pair; it comes last in this labeler's queue."""
        labeler = validate_labeler(labeler)
        with self._write() as conn:
            conn.execute(
                "UPDATE leases SET expires = 0, skipped = 1 WHERE pair_id = ? AND labeler = ?", (pair_id, labeler)
            )

    def active_labels(self, kind: str | None = None) -> list[LabelRecord]:
        """Labels that are not retracted, oldest first."""
        sql = f"SELECT {', '.join(_LABEL_COLUMNS)} FROM active_labels"
        args: tuple = ()
        if kind is not None:
            sql += " WHERE kind = ?"
            args = (kind,)
        return [_label_from_row(row) for row in self._conn().execute(sql + " ORDER BY seq", args)]

    def all_events(self) -> list[LabelRecord]:
        """Every label and retraction ever stored, in the order they were stored."""
        rows = self._conn().execute(f"SELECT {', '.join(_LABEL_COLUMNS)} FROM labels ORDER BY seq")
        return [_label_from_row(row) for row in rows]

    def progress(self, labeler: str | None = None) -> dict[str, Any]:
        """Counts of active Label-tab labels: this labeler's, everyone's, per labeler, and pairs still short
        of k labels. Pairs of :data:`VOTE_ONLY_STRATEGIES` are not Label-tab work and are not counted."""
        with self._read() as conn:
            per_labeler = dict(conn.execute(
                "SELECT labeler, count(*) FROM active_labels WHERE kind = 'label' GROUP BY labeler ORDER BY labeler"
            ).fetchall())
            pairs = conn.execute(f"SELECT count(*) FROM pairs AS p WHERE {_LABEL_TAB_PAIRS}").fetchone()[0]
            done = conn.execute(
                "SELECT count(*) FROM (SELECT l.pair_id FROM active_labels AS l JOIN pairs AS p USING (pair_id) "
                f"WHERE l.kind = 'label' AND {_LABEL_TAB_PAIRS} GROUP BY l.pair_id HAVING count(*) >= ?)", (self.k,)
            ).fetchone()[0]
        mine = per_labeler.get(labeler.strip(), 0) if isinstance(labeler, str) else 0
        return {"mine": mine, "everyone": sum(per_labeler.values()), "labelers": len(per_labeler),
                "pairs": pairs, "remaining": pairs - done, "per_labeler": per_labeler, "k": self.k}

    @staticmethod
    def _check_k(k: Any) -> int:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise LabelError(f"k (labels wanted per pair) must be a whole number of at least 1, got {k!r}.")
        return k

    def set_k(self, k: int) -> None:
        """Change how many labelers each pair should get (this store object only)."""
        self.k = self._check_k(k)

    # -- settings ------------------------------------------------------------------------------------------

    def get_setting(self, key: str, default: Any = None) -> Any:
        row = self._conn().execute("SELECT value FROM settings WHERE key = ?", (str(key),)).fetchone()
        return json.loads(row[0]) if row else default

    def set_setting(self, key: str, value: Any) -> None:
        """Store a small JSON-able value (guidelines markdown, UI defaults)."""
        try:
            encoded = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise LabelError(f"Setting {key!r} must be JSON-able (text, numbers, lists, dicts): {exc}.") from exc
        with self._write() as conn:
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(key), encoded),
            )

    # -- sync ----------------------------------------------------------------------------------------------

    def iter_events(self) -> Iterator[dict[str, Any]]:
        """Every pair, then every label and retraction in stored order, as JSON-able dicts with ``type``
        ("pair" or "label") and a stable ``id`` (pair_id or label_id)."""
        for pair in self.list_pairs():
            yield {"type": "pair", "id": pair.pair_id, **pair.to_dict()}
        for label in self.all_events():
            yield {"type": "label", "id": label.label_id, **label.to_dict()}

    def import_events(self, events: Iterable[dict[str, Any]]) -> tuple[int, int]:
        """Add events from :meth:`iter_events` of this or another store, all or nothing. Events already stored
        are skipped, so importing twice changes nothing. Returns (pairs inserted, labels inserted)."""
        pairs: list[PairRecord] = []
        labels: list[LabelRecord] = []
        for number, event in enumerate(events, start=1):
            if not isinstance(event, dict) or event.get("type") not in ("pair", "label"):
                raise LabelError(f"Event {number} is not a dict with type 'pair' or 'label'; nothing was imported.")
            try:
                if event["type"] == "pair":
                    pair = PairRecord(**{k: v for k, v in event.items() if k in _PAIR_FIELDS})
                    if event.get("id", pair.pair_id) != pair.pair_id:
                        raise LabelError(f"id {event.get('id')!r} differs from pair_id {pair.pair_id!r}")
                    self._check_pair(pair)
                    pairs.append(pair)
                else:
                    label = LabelRecord(**{k: v for k, v in event.items() if k in _LABEL_FIELDS})
                    if event.get("id", label.label_id) != label.label_id:
                        raise LabelError(f"id {event.get('id')!r} differs from label_id {label.label_id!r}")
                    labels.append(self._check_label(label))
            except (TypeError, ValueError) as exc:
                raise LabelError(f"Event {number} ({event.get('type')}) is malformed: {exc}. Nothing was imported.") from exc
        with self._write() as conn:
            new_pairs = sum(self._insert_pair(conn, pair) for pair in pairs)
            new_labels = 0
            for label in labels:
                if conn.execute("SELECT 1 FROM pairs WHERE pair_id = ?", (label.pair_id,)).fetchone() is None:
                    raise LabelError(
                        f"Label {label.label_id} refers to pair {label.pair_id!r}, which is neither stored nor in "
                        "the import. Nothing was imported."
                    )
                self._same_label(conn, label)
                new_labels += self._insert_label(conn, label)
            for label in labels:
                if label.retracts is not None and conn.execute(
                    "SELECT 1 FROM labels WHERE label_id = ?", (label.retracts,)
                ).fetchone() is None:
                    raise LabelError(
                        f"Retraction {label.label_id} takes back label {label.retracts!r}, which is neither stored "
                        "nor in the import. Nothing was imported."
                    )
        return new_pairs, new_labels
