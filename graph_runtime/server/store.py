"""The queue's and history's state on disk: one SQLite file, so both survive a crash.

Why SQLite (stdlib `sqlite3`): every change is one short transaction, atomic whatever
happens to the process, and the history can be read page by page without holding it all in
memory. The file is opened in WAL mode with `synchronous=NORMAL`: a commit costs no fsync,
and a committed change survives the process being killed (only a power cut can undo the
last few). It is opened with an exclusive lock, so a second server started on the same file
fails at startup instead of running the same pending prompts twice.

Three tables: `workflows` holds each workflow document once, keyed by the SHA-256 of its
JSON text; `queue` holds the prompts accepted but not finished (the running one flagged);
`history` holds the finished ones, oldest first by `id`, each with its entry (status,
outputs, files, timings, error) and a reference to its workflow. A prompt moves from
`queue` to `history` in one transaction, so it is never in neither.

One connection serves every thread, behind a lock: the queue writes from its worker and
from request handlers, history pages are read from worker threads of the event loop.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graph_runtime.settings import SettingsError

MEMORY = ":memory:"
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS workflows (
    hash TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt_id TEXT NOT NULL UNIQUE,
    number NUMERIC NOT NULL,
    client_id TEXT,
    queued_at REAL NOT NULL,
    workflow TEXT NOT NULL,
    meta TEXT NOT NULL,
    running INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS queue_workflow ON queue(workflow);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt_id TEXT NOT NULL UNIQUE,
    number NUMERIC NOT NULL,
    client_id TEXT,
    queued_at REAL NOT NULL,
    workflow TEXT NOT NULL,
    meta TEXT NOT NULL,
    entry TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_workflow ON history(workflow);
"""
_PROMPT_COLUMNS = "prompt_id, number, client_id, queued_at, workflow, meta"


def _dumps(value: Any) -> str:
    # Values JSON cannot hold (paths, numpy scalars in a node's ui) are kept as text, as
    # the HTTP responses write them.
    return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class WorkflowText:
    """A workflow document serialised once: its JSON text and the hash it is stored by."""

    text: str
    hash: str

    @classmethod
    def of(cls, document: dict[str, Any]) -> WorkflowText:
        text = _dumps(document)
        return cls(text, hashlib.sha256(text.encode("utf-8")).hexdigest())


@dataclass
class StoredPrompt:
    """A prompt as stored: what is needed to queue it again or to show it in the history.
    The workflow stays JSON text until asked for (a listing can copy the text as is)."""

    prompt_id: str
    number: float
    client_id: str | None
    queued_at: float
    workflow_hash: str
    workflow_text: str
    meta: dict[str, Any] = field(default_factory=dict)
    seq: int = 0
    running: bool = False

    @functools.cached_property
    def workflow(self) -> dict[str, Any]:
        document = json.loads(self.workflow_text) if self.workflow_text else {}
        return document if isinstance(document, dict) else {}


@dataclass
class StoredEntry:
    """A finished prompt: the prompt, its history entry (JSON text, without the workflow)
    and its place in the history (`id`, increasing)."""

    id: int
    prompt: StoredPrompt
    entry_text: str

    @property
    def entry(self) -> dict[str, Any]:
        return dict(json.loads(self.entry_text))


class QueueStore:
    """The SQLite file behind one prompt queue (`":memory:"`: nothing is kept)."""

    def __init__(self, path: Path | str = MEMORY, history_limit: int = 10000) -> None:
        self.path = str(path)
        self.history_limit = history_limit
        self._lock = threading.Lock()
        self._conn = _connect(self.path)
        self._count = self._conn.execute("SELECT COUNT(*) FROM history").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken under the lock; rolled back if anything fails."""
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:  # SQLite may have rolled back already
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # ------------------------------------------------------------------ the queue
    def add(self, prompt: StoredPrompt, workflow: WorkflowText) -> int:
        """Store an accepted prompt (and its workflow, unless already stored); returns its
        place in submission order."""
        with self._transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO workflows(hash, body) VALUES (?, ?)",
                         (workflow.hash, workflow.text))
            cursor = conn.execute(
                f"INSERT INTO queue({_PROMPT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (prompt.prompt_id, prompt.number, prompt.client_id, prompt.queued_at,
                 workflow.hash, _dumps(prompt.meta)))
            return int(cursor.lastrowid or 0)

    def set_running(self, prompt_id: str, running: bool = True) -> None:
        with self._transaction() as conn:
            conn.execute("UPDATE queue SET running = ? WHERE prompt_id = ?",
                         (int(running), prompt_id))

    def remove(self, prompt_ids: Iterable[str] | None) -> None:
        """Drop prompts from the queue (all of them when None)."""
        with self._transaction() as conn:
            if prompt_ids is None:
                hashes = [r[0] for r in conn.execute("SELECT workflow FROM queue")]
                conn.execute("DELETE FROM queue")
            else:
                hashes = _delete_prompts(conn, "queue", prompt_ids)
            _drop_orphans(conn, hashes)

    def unfinished(self) -> list[StoredPrompt]:
        """The prompts left in the queue (after a crash: the running one flagged), in
        submission order."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_PROMPT_COLUMNS}, seq, running FROM queue ORDER BY seq").fetchall()
            return [self._prompt(row[:6], seq=row[6], running=bool(row[7])) for row in rows]

    def max_number(self) -> float:
        """The highest queue number given so far (0 when none), so numbering continues."""
        with self._lock:
            row = self._conn.execute(
                "SELECT MAX(n) FROM (SELECT MAX(number) AS n FROM queue "
                "UNION ALL SELECT MAX(number) FROM history)").fetchone()
        return float(row[0] or 0)

    # ------------------------------------------------------------------ finishing
    def finish(self, prompt: StoredPrompt, entry: dict[str, Any]) -> None:
        """Move a prompt from the queue to the end of the history, in one transaction;
        the oldest entries beyond `history_limit` go."""
        body = _dumps({k: v for k, v in entry.items() if k != "workflow"})
        with self._transaction() as conn:
            old = conn.execute("SELECT workflow FROM history WHERE prompt_id = ?",
                               (prompt.prompt_id,)).fetchone()
            conn.execute(
                f"INSERT OR REPLACE INTO history({_PROMPT_COLUMNS}, entry) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (prompt.prompt_id, prompt.number, prompt.client_id, prompt.queued_at,
                 prompt.workflow_hash, _dumps(prompt.meta), body))
            conn.execute("DELETE FROM queue WHERE prompt_id = ?", (prompt.prompt_id,))
            count = self._count + (0 if old is not None else 1)
            hashes = [old[0]] if old is not None else []
            if count > self.history_limit:
                oldest = conn.execute("SELECT id, workflow FROM history ORDER BY id LIMIT ?",
                                      (count - self.history_limit,)).fetchall()
                conn.execute("DELETE FROM history WHERE id <= ?", (oldest[-1][0],))
                hashes += [digest for _, digest in oldest]
                count = self.history_limit
            _drop_orphans(conn, hashes)
            self._count = count

    def forget(self, prompt_ids: Iterable[str] | None) -> None:
        """Delete history entries (all of them when None)."""
        with self._transaction() as conn:
            if prompt_ids is None:
                conn.execute("DELETE FROM history")
                conn.execute("DELETE FROM workflows WHERE hash NOT IN "
                             "(SELECT workflow FROM queue)")
            else:
                _drop_orphans(conn, _delete_prompts(conn, "history", prompt_ids))
            self._count = conn.execute("SELECT COUNT(*) FROM history").fetchone()[0]

    # ------------------------------------------------------------------ reading the history
    def count(self) -> int:
        return self._count

    def start_id(self, offset: int) -> int | None:
        """The id of the entry at `offset` (0: the oldest); None past the end."""
        with self._lock:
            row = self._conn.execute("SELECT id FROM history ORDER BY id LIMIT 1 OFFSET ?",
                                     (max(offset, 0),)).fetchone()
        return row[0] if row is not None else None

    def entries(self, from_id: int, limit: int) -> list[StoredEntry]:
        """Up to `limit` entries with `id >= from_id`, oldest first; each distinct workflow
        is read once per call."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT id, {_PROMPT_COLUMNS}, entry FROM history WHERE id >= ? "
                "ORDER BY id LIMIT ?", (from_id, max(limit, 0))).fetchall()
            return self._entries(rows)

    def entry(self, prompt_id: str) -> StoredEntry | None:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT id, {_PROMPT_COLUMNS}, entry FROM history WHERE prompt_id = ?",
                (prompt_id,)).fetchall()
            found = self._entries(rows)
        return found[0] if found else None

    # ------------------------------------------------------------------ rows to objects
    def _entries(self, rows: list[tuple[Any, ...]]) -> list[StoredEntry]:
        documents: dict[str, str] = {}
        return [StoredEntry(row[0], self._prompt(row[1:7], documents), row[7]) for row in rows]

    def _prompt(self, row: tuple[Any, ...], documents: dict[str, str] | None = None,
                **extra: Any) -> StoredPrompt:
        """A prompt from its columns, with its workflow's text (read once per call)."""
        prompt_id, number, client_id, queued_at, digest, meta = row
        documents = documents if documents is not None else {}
        if digest not in documents:
            found = self._conn.execute("SELECT body FROM workflows WHERE hash = ?",
                                       (digest,)).fetchone()
            documents[digest] = found[0] if found is not None else ""
        return StoredPrompt(prompt_id, number, client_id, queued_at, digest,
                            documents[digest], json.loads(meta), **extra)


def _delete_prompts(conn: sqlite3.Connection, table: str,
                    prompt_ids: Iterable[str]) -> list[str]:
    """Delete these prompts from `table` ("queue" or "history"); their workflows' hashes.
    (Read, then deleted: `DELETE ... RETURNING` needs a newer SQLite than some systems'.)"""
    hashes = []
    for pid in prompt_ids:
        row = conn.execute(f"SELECT workflow FROM {table} WHERE prompt_id = ?",
                           (pid,)).fetchone()
        if row is not None:
            conn.execute(f"DELETE FROM {table} WHERE prompt_id = ?", (pid,))
            hashes.append(row[0])
    return hashes


def _drop_orphans(conn: sqlite3.Connection, hashes: Iterable[str]) -> None:
    """Delete the workflows among `hashes` that no queued or finished prompt refers to."""
    for digest in set(hashes):
        conn.execute("DELETE FROM workflows WHERE hash = ? "
                     "AND NOT EXISTS (SELECT 1 FROM history WHERE workflow = ?) "
                     "AND NOT EXISTS (SELECT 1 FROM queue WHERE workflow = ?)",
                     (digest, digest, digest))


def _connect(path: str) -> sqlite3.Connection:
    """Open (creating if needed) the file, lock it for this process, and set up the schema.
    An unusable file is a startup error that names it."""
    try:
        if path != MEMORY:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=0.5, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            conn.close()
            raise SettingsError(f"state database {path}: written by a newer version "
                                f"(schema {version}, this build reads {SCHEMA_VERSION})")
        # Writing the version takes the exclusive lock now rather than at the first prompt.
        conn.executescript(_SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION};")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):
            raise SettingsError(f"state database {path} is in use by another process "
                                "(another server?); give this one its own with --state-db"
                                ) from exc
        raise SettingsError(f"state database {path}: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise SettingsError(f"state database {path} is unreadable ({exc}); move it away "
                            "to start with an empty queue and history") from exc
    except OSError as exc:
        raise SettingsError(f"state database {path}: {exc}") from exc
    return conn
