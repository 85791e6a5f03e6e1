"""State the CDSS worker processes must share: JWT `jti`s seen, cards shown, card ids.

With several uvicorn workers a request can land on any of them: a replayed token sent to
another worker must still be refused, and a hook repeated for the same draft orders must
know what another worker already showed (the scope names the patient/encounter pseudonym,
the hook and a digest of the draft orders). One small SQLite file (WAL) next to the audit
log holds these; each table is bounded in time (rows past their use are purged as writes go
by).
Only CDS Hooks calls touch it (a few hundred microseconds), never the native check path.
Patient scopes arrive already pseudonymised (keyed hashes), never raw identifiers.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jti (key TEXT PRIMARY KEY, exp REAL NOT NULL);
CREATE TABLE IF NOT EXISTS shown (scope TEXT NOT NULL, alert TEXT NOT NULL, at REAL NOT NULL,
                                  PRIMARY KEY (scope, alert));
CREATE TABLE IF NOT EXISTS cards (uuid TEXT PRIMARY KEY, alert TEXT NOT NULL, kind TEXT NOT NULL,
                                  at REAL NOT NULL);
"""
PURGE_EVERY = 500
LEEWAY_S = 30


class SharedState:
    def __init__(self, path: Path | str, shown_ttl_s: float = 12 * 3600,
                 card_ttl_s: float = 7 * 24 * 3600):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._writes = 0
        self.shown_ttl_s = shown_ttl_s
        self.card_ttl_s = card_ttl_s

    def _wrote(self, now: float) -> None:
        self._writes += 1
        if self._writes % PURGE_EVERY == 0:
            self._db.execute("DELETE FROM jti WHERE exp < ?", (now - LEEWAY_S,))
            self._db.execute("DELETE FROM shown WHERE at < ?", (now - self.shown_ttl_s,))
            self._db.execute("DELETE FROM cards WHERE at < ?", (now - self.card_ttl_s,))

    # ------------------------------------------------------------------ JWT replay
    def check_and_add(self, key: str, exp: float, now: float) -> bool:
        """True the first time `key` is seen by any worker; False on a replay."""
        with self._lock:
            try:
                self._db.execute("INSERT INTO jti (key, exp) VALUES (?, ?)", (key, exp))
            except sqlite3.IntegrityError:
                row = self._db.execute("SELECT exp FROM jti WHERE key = ?", (key,)).fetchone()
                if row is None or row[0] >= now - LEEWAY_S:
                    return False
                # a jti from an expired token: the token itself is refused by `exp` anyway
                self._db.execute("UPDATE jti SET exp = ? WHERE key = ?", (exp, key))
            self._wrote(now)
            return True

    # ------------------------------------------------------------------ cards shown
    def seen(self, scope: str, alert_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT at FROM shown WHERE scope = ? AND alert = ?",
                                   (scope, alert_id)).fetchone()
        return row is not None and time.time() - row[0] < self.shown_ttl_s

    def remember(self, scope: str, alert_id: str) -> None:
        now = time.time()
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO shown (scope, alert, at) VALUES (?, ?, ?)",
                             (scope, alert_id, now))
            self._wrote(now)

    # ------------------------------------------------------------------ card ids
    def add(self, card_uuid: str, alert) -> None:
        now = time.time()
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO cards (uuid, alert, kind, at) "
                             "VALUES (?, ?, ?, ?)", (card_uuid, alert.id, alert.kind, now))
            self._wrote(now)

    def get(self, card_uuid: str) -> tuple[str, str] | None:
        with self._lock:
            row = self._db.execute("SELECT alert, kind FROM cards WHERE uuid = ?",
                                   (card_uuid,)).fetchone()
        return (row[0], row[1]) if row else None

    def close(self) -> None:
        with self._lock:
            self._db.close()
