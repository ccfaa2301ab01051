"""The kiosk's outbox: QoS 1 messages kept until the broker acknowledges them.

Match events must survive what the kiosk cannot prevent: a broker or WAN
outage followed by a systemd restart, an update, a power cut. So
``KioskMqtt`` writes every QoS 1 message here *before* it is published and
removes it only when the broker's PUBACK arrives; after a crash or a restart
what is left is sent again, byte for byte (same ``event_id``: subscribers
de-duplicate on it).

``SqliteOutbox`` is one SQLite file in WAL mode. ``put`` commits without an
fsync (SQLite's ``synchronous=NORMAL``: the message survives a crash of the
process as soon as ``put`` returns, at a few tens of microseconds, so the
frame loop that calls it never waits for the disk). With ``sync = "full"``
(the default) the publisher then fsyncs the WAL before it sends anything
new, so every message is on disk, power cut included, before it leaves the
kiosk; ``"normal"`` leaves that to SQLite's checkpoints (a power cut can
lose the last messages). bench/outbox.py measures both. The queue is
bounded by count and by bytes; when full the oldest message is dropped and
counted. A file SQLite cannot read is moved aside (``.corrupt-TIME``) and a
new one started; a write that fails (disk full) keeps the message in memory
and says so in the log. ``MemoryOutbox`` is the same queue in memory only
(``[mqtt] outbox = "memory"``, and the library default): a restart loses it.

Default location: ``outbox-{kiosk id}.sqlite`` in the kiosk's state
directory, ``$STATE_DIRECTORY`` (systemd's ``StateDirectory=kiosk``:
/var/lib/kiosk; the containers set it too), else
``$XDG_STATE_HOME/kiosk``, else ``~/.local/state/kiosk``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from models.errors import ConfigError

__all__ = ["OutMsg", "Outbox", "MemoryOutbox", "SqliteOutbox", "state_dir", "default_outbox_path",
           "open_outbox"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class OutMsg:
    id: int
    topic: str
    payload: bytes
    qos: int


class Outbox(Protocol):
    """A bounded FIFO of messages waiting for their PUBACK."""

    dropped: int     # dropped (oldest first) because the queue was full, this run
    kind: str        # "sqlite" or "memory"

    def put(self, topic: str, payload: bytes, qos: int) -> None: ...

    def sync(self) -> None: ...

    def head(self) -> OutMsg | None: ...

    def remove(self, msg_id: int) -> None: ...

    def __len__(self) -> int: ...

    def close(self) -> None: ...


class MemoryOutbox:
    """The outbox in memory: bounded, oldest dropped; lost when the process ends."""

    kind = "memory"

    def __init__(self, max_messages: int = 1000, max_bytes: int = 64 << 20) -> None:
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self._q: deque[OutMsg] = deque()
        self._bytes = 0
        self._next = 1
        self._lock = threading.Lock()
        self.dropped = 0

    def put(self, topic: str, payload: bytes, qos: int) -> None:
        with self._lock:
            self._q.append(OutMsg(self._next, topic, bytes(payload), qos))
            self._next += 1
            self._bytes += len(payload)
            while len(self._q) > 1 and (len(self._q) > self.max_messages
                                        or self._bytes > self.max_bytes):
                self._bytes -= len(self._q.popleft().payload)
                self.dropped += 1

    def sync(self) -> None:
        pass

    def head(self) -> OutMsg | None:
        with self._lock:
            return self._q[0] if self._q else None

    def remove(self, msg_id: int) -> None:
        with self._lock:
            for i, m in enumerate(self._q):
                if m.id == msg_id:
                    del self._q[i]
                    self._bytes -= len(m.payload)
                    return

    def __len__(self) -> int:
        with self._lock:
            return len(self._q)

    def close(self) -> None:
        pass


class SqliteOutbox:
    """The outbox in one SQLite file (WAL); see the module docstring."""

    kind = "sqlite"

    def __init__(self, path: str | Path, max_messages: int = 1000, max_bytes: int = 64 << 20,
                 sync: Literal["full", "normal"] = "full") -> None:
        self.path = Path(path)
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self._lock = threading.Lock()
        self.dropped = 0
        self._full = sync == "full"
        self._unsynced = False
        self._wal_fd: int | None = None
        self._spill = MemoryOutbox(max_messages, max_bytes)   # when the disk refuses a write
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error("outbox %s is unreadable (%s); moved to %s, starting a new one",
                      self.path, exc, aside.name)
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self._db = self._open()
        except OSError as exc:
            raise ConfigError(f"mqtt.outbox: cannot create {self.path} ({exc.strerror})") from None
        self._count, self._bytes = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()
        self.carried_over = self._count
        if self._count:
            log.warning("outbox %s: %d message(s) from an earlier run will be sent first",
                        self.path, self._count)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                             timeout=10)
        try:
            if db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
                raise sqlite3.DatabaseError("WAL journal mode refused")
            db.execute("PRAGMA synchronous=NORMAL")   # fsync: see sync()
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    @property
    def dropped_total(self) -> int:
        """Messages ever dropped from this file's queue (kept across restarts)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
        return int(row[0]) if row else 0

    def put(self, topic: str, payload: bytes, qos: int) -> None:
        with self._lock:
            try:
                self._put(topic, bytes(payload), qos)
            except sqlite3.Error as exc:
                log.error("outbox %s: cannot store a message (%s); keeping it in memory",
                          self.path, exc)
                self._spill.put(topic, payload, qos)

    def _put(self, topic: str, payload: bytes, qos: int) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT INTO outbox (topic, payload, qos, created) VALUES (?, ?, ?, ?)",
                       (topic, payload, qos, time.time()))
            count, size, dropped = self._count + 1, self._bytes + len(payload), 0
            while count > 1 and (count > self.max_messages or size > self.max_bytes):
                oldest, n = db.execute("SELECT id, LENGTH(payload) FROM outbox ORDER BY id "
                                       "LIMIT 1").fetchone()
                db.execute("DELETE FROM outbox WHERE id = ?", (oldest,))
                count, size, dropped = count - 1, size - n, dropped + 1
            if dropped:
                db.execute("INSERT INTO meta (key, value) VALUES ('dropped', ?) ON CONFLICT(key) "
                           "DO UPDATE SET value = value + excluded.value", (dropped,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._count, self._bytes = count, size
        self.dropped += dropped
        self._unsynced = True

    def sync(self) -> None:
        """With sync = "full": make every message stored so far durable
        (fsync of the WAL, where committed transactions live until a
        checkpoint). Called by the publisher before it sends."""
        if not (self._full and self._unsynced):
            return
        with self._lock:
            self._unsynced = False
            try:
                if self._wal_fd is None:
                    self._wal_fd = os.open(f"{self.path}-wal", os.O_RDONLY)
                os.fsync(self._wal_fd)
            except OSError as exc:
                log.error("outbox %s: fsync failed (%s)", self.path, exc)

    def head(self) -> OutMsg | None:
        spilled = self._spill.head()
        if spilled is not None:
            return OutMsg(-spilled.id, spilled.topic, spilled.payload, spilled.qos)
        with self._lock:
            row = self._db.execute("SELECT id, topic, payload, qos FROM outbox ORDER BY id "
                                   "LIMIT 1").fetchone()
        return OutMsg(row[0], row[1], bytes(row[2]), row[3]) if row else None

    def remove(self, msg_id: int) -> None:
        if msg_id < 0:
            self._spill.remove(-msg_id)
            return
        with self._lock:
            try:
                n = self._db.execute("SELECT LENGTH(payload) FROM outbox WHERE id = ?",
                                     (msg_id,)).fetchone()
                if n is not None:
                    self._db.execute("DELETE FROM outbox WHERE id = ?", (msg_id,))
                    self._count, self._bytes = self._count - 1, self._bytes - n[0]
            except sqlite3.Error as exc:  # sent again after a restart: a duplicate, not a loss
                log.error("outbox %s: cannot remove a delivered message (%s)", self.path, exc)

    def __len__(self) -> int:
        with self._lock:
            return self._count + len(self._spill)

    def close(self) -> None:
        with self._lock:
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None
            self._db.close()


def state_dir() -> Path:
    """The kiosk's state directory (see the module docstring)."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if os.environ.get("XDG_STATE_HOME"):
        return Path(os.environ["XDG_STATE_HOME"]) / "kiosk"
    return Path.home() / ".local" / "state" / "kiosk"


def default_outbox_path(kiosk_id: str) -> Path:
    return state_dir() / f"outbox-{kiosk_id}.sqlite"


def open_outbox(setting: str | None, kiosk_id: str, *, max_messages: int, max_bytes: int,
                sync: Literal["full", "normal"] = "full") -> Outbox:
    """The outbox ``[mqtt] outbox`` names: "memory", a file path, or None
    for the default file in the state directory."""
    if setting == "memory":
        return MemoryOutbox(max_messages, max_bytes)
    path = default_outbox_path(kiosk_id) if setting is None else Path(setting)
    return SqliteOutbox(path, max_messages, max_bytes, sync)
