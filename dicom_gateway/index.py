"""The index and job queue: instances, studies, jobs, results and exports.

SQLite in WAL mode by default (embedded, one gateway process); PostgreSQL with the
same SQL when several gateway workers share the work, where claims use
``FOR UPDATE SKIP LOCKED``. Every dialect difference lives in :class:`Dialect`.
Times are Unix seconds (float).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Study states: receiving -> assembled -> processing -> processed (a late instance: -> receiving)
# Job states: pending -> running -> done | failed | superseded
# Result states: current | superseded | failed
# Export states: pending -> sending -> done | (pending again, with backoff) | dead
#   | superseded (a FHIR/HL7/webhook message a newer result made obsolete before delivery)
#
# An export is one delivery on one channel: "dicom" (C-STORE of a result object to a
# [[destinations]] PACS), "fhir", "hl7" or "webhook". For DICOM, sop_uid/sop_class_uid are
# the object's; for the other channels sop_uid holds the idempotency key (FHIR report
# identifier, HL7 message control id) and sop_class_uid the message kind. Every channel
# shares the same leases, backoff and dead letters.

SCHEMA_VERSION = 3
# what turns a database of version N-1 into version N (a fresh one is created at the latest;
# new tables come from SCHEMA itself, whose statements all say IF NOT EXISTS)
MIGRATIONS = {
    2: ["ALTER TABLE exports ADD COLUMN channel TEXT NOT NULL DEFAULT 'dicom'"],
    3: [],  # the worklist's users, sessions, OIDC requests, reads and reviews: new tables
}

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    path TEXT NOT NULL,
    size BIGINT NOT NULL,
    calling_ae TEXT NOT NULL,
    attrs TEXT NOT NULL,
    received_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_uid);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    calling_ae TEXT NOT NULL,
    state TEXT NOT NULL,
    generation INTEGER NOT NULL,
    quiet_period_s DOUBLE PRECISION NOT NULL,
    instance_count INTEGER NOT NULL,
    first_arrival DOUBLE PRECISION NOT NULL,
    last_arrival DOUBLE PRECISION NOT NULL,
    assembled_at DOUBLE PRECISION,
    processed_at DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS studies_state ON studies (state, last_arrival);
CREATE TABLE IF NOT EXISTS jobs (
    id {autoid},
    study_uid TEXT NOT NULL,
    generation INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_until DOUBLE PRECISION,
    worker TEXT,
    error TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, id);
CREATE TABLE IF NOT EXISTS results (
    id {autoid},
    job_id BIGINT NOT NULL,
    study_uid TEXT NOT NULL,
    generation INTEGER NOT NULL,
    analysis TEXT NOT NULL,
    state TEXT NOT NULL,
    priority TEXT NOT NULL,
    summary TEXT NOT NULL,
    error TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    superseded_by BIGINT
);
CREATE INDEX IF NOT EXISTS results_study ON results (study_uid, analysis);
CREATE TABLE IF NOT EXISTS exports (
    id {autoid},
    result_id BIGINT NOT NULL,
    study_uid TEXT NOT NULL,
    destination TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL,
    channel TEXT NOT NULL DEFAULT 'dicom',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    lease_until DOUBLE PRECISION,
    last_error TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    done_at DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS exports_due ON exports (state, next_attempt_at);
CREATE TABLE IF NOT EXISTS schema_version (
    component TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);
"""

# --- worklist tables: sign-in (users, sessions), read status, radiologists' reviews ---
# Appended to the schema; PostgreSQL takes the last index of the whole schema as "all there".
SCHEMA += """
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    display_name TEXT NOT NULL,
    active INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    token_sha256 TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    csrf_token TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS oidc_requests (
    state_sha256 TEXT PRIMARY KEY,
    nonce TEXT NOT NULL,
    code_verifier TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS study_reads (
    study_uid TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    read_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS reviews (
    id {autoid},
    study_uid TEXT NOT NULL,
    result_id BIGINT NOT NULL,
    reviewer TEXT NOT NULL,
    agrees INTEGER NOT NULL,
    ai_verdict TEXT NOT NULL,
    label TEXT,
    reason TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS reviews_study ON reviews (study_uid, id);
"""


class Dialect:
    """What differs between SQLite and PostgreSQL, in one place: the Index never asks which."""

    name = "sqlite"
    autoid = "INTEGER PRIMARY KEY AUTOINCREMENT"
    skip_locked = ""
    for_update = ""  # SQLite's BEGIN IMMEDIATE already holds the one write lock
    begin = "BEGIN IMMEDIATE"
    single_process = True  # the embedded mode: one gateway process owns the database

    def __init__(self, url: str):
        self.path = Path(url[len("sqlite:///") :])
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def sql(self, text: str) -> str:
        return text

    def connect(self):
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit survives a process crash; after an OS crash the last commits may
        # roll back, and Gateway.start() re-indexes spool files the index lost (the
        # fsynced spool is the journal), so an acknowledged instance is never lost
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def serialise_schema_changes(self, q) -> None:
        """Nothing to do: one process owns an SQLite index."""

    def table_exists(self, q, table: str) -> bool:
        return q("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                 (table,)).fetchone() is not None


class PostgresDialect(Dialect):
    name = "postgresql"
    autoid = "BIGSERIAL PRIMARY KEY"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    # lock the row read, so a worker in another process cannot change it before our update
    for_update = " FOR UPDATE"
    begin = "BEGIN"
    single_process = False

    def __init__(self, url: str = ""):
        self.url = url

    def sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def connect(self):
        import psycopg

        return psycopg.connect(self.url, autocommit=True)

    def serialise_schema_changes(self, q) -> None:
        """Workers starting together: one creates or migrates the schema, the others wait."""
        q("SELECT pg_advisory_xact_lock(4242)")

    def table_exists(self, q, table: str) -> bool:
        return q("SELECT to_regclass(?)", (table,)).fetchone()[0] is not None


@dataclass
class Job:
    id: int
    study_uid: str
    generation: int
    attempts: int


@dataclass
class Export:
    id: int
    result_id: int
    study_uid: str
    destination: str
    sop_uid: str  # DICOM: the object's SOP Instance UID; other channels: the idempotency key
    sop_class_uid: str  # DICOM: the SOP class; other channels: the message kind
    path: str  # what to send, under the spool root
    attempts: int
    channel: str = "dicom"


class Index:
    """All durable gateway state. Thread-safe: one connection per thread."""

    def __init__(self, url: str):
        self.url = url
        self._local = threading.local()
        self._conns: list[Any] = []
        self._lock = threading.Lock()
        if url.startswith("sqlite:///"):
            self.dialect: Dialect = Dialect(url)
        elif url.startswith(("postgresql://", "postgres://")):
            self.dialect = PostgresDialect(url)
        else:
            raise ValueError(
                f"gateway.database_url {url!r} is not supported: use sqlite:///PATH or postgresql://..."
            )
        with self.tx() as q:
            self.dialect.serialise_schema_changes(q)
            version = self._schema_version(q)
            if version == SCHEMA_VERSION:
                # CREATE INDEX IF NOT EXISTS locks its table even when the index exists, and
                # deadlocks against running PostgreSQL workers: no DDL once the schema is there
                return
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"the index {self.dialect.name} database has schema version {version}, "
                    f"newer than this Haidang's {SCHEMA_VERSION}: upgrade Haidang")
            for stmt in SCHEMA.format(autoid=self.dialect.autoid).split(";"):
                if stmt.strip():
                    q(stmt)
            for step in range(max(version, 1) + 1, SCHEMA_VERSION + 1) if version else ():
                for stmt in MIGRATIONS[step]:
                    q(stmt)
            q("DELETE FROM schema_version WHERE component = 'index'")
            q("INSERT INTO schema_version (component, version) VALUES ('index', ?)",
              (SCHEMA_VERSION,))

    def _schema_version(self, q) -> int:
        """0: empty database; 1: the first schema (it had no version table); else as stored."""
        if self.dialect.table_exists(q, "schema_version"):
            row = q("SELECT version FROM schema_version WHERE component = 'index'").fetchone()
            if row:
                return int(row[0])
        return 1 if self.dialect.table_exists(q, "exports") else 0

    # -- connections and transactions ------------------------------------------------

    def _connect(self):
        conn = self.dialect.connect()
        with self._lock:
            self._conns.append(conn)
        return conn

    @property
    def conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    @contextmanager
    def tx(self) -> Iterator[Any]:
        """A write transaction; yields ``q(sql, params) -> cursor`` with ``?`` placeholders."""
        conn = self.conn
        cur = conn.cursor()

        def q(sql: str, params: tuple = ()):
            cur.execute(self.dialect.sql(sql), params)
            return cur

        cur.execute(self.dialect.begin)
        try:
            yield q
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        cur = self.conn.cursor()
        cur.execute(self.dialect.sql(sql), params)
        return cur.fetchall()

    def close(self) -> None:
        with self._lock:
            for conn in self._conns:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - closing on shutdown, nothing to do
                    pass
            self._conns.clear()
        self._local = threading.local()

    # -- ingest -----------------------------------------------------------------------

    def indexed_paths(self) -> set[str]:
        return {row[0] for row in self.query("SELECT path FROM instances")}

    def has_instance(self, sop_uid: str) -> bool:
        return bool(self.query("SELECT 1 FROM instances WHERE sop_uid = ?", (sop_uid,)))

    def record_instance(self, **record) -> bool:
        """Index a spooled instance; returns False if it was already there (idempotent).
        The keyword arguments are :meth:`_record`'s."""
        return self.record_instances([record])[0]

    def record_instances(self, records: list[dict]) -> list[bool]:
        """Index several spooled instances in one transaction (group commit); each record
        holds :meth:`_record`'s keyword arguments. Returns, per record, whether it
        was new. All or nothing: on an error none is recorded. Study rows are taken in
        UID order, so concurrent batches (PostgreSQL: several processes) cannot deadlock."""
        order = sorted(range(len(records)), key=lambda i: records[i]["study_uid"])
        new = [False] * len(records)
        with self.tx() as q:
            for i in order:
                new[i] = self._record(q, **records[i])
        return new

    def _record(
        self,
        q,
        *,
        sop_uid: str,
        study_uid: str,
        series_uid: str,
        sop_class_uid: str,
        transfer_syntax: str,
        path: str,
        size: int,
        calling_ae: str,
        attrs: dict,
        quiet_period_s: float,
        now: float | None = None,
    ) -> bool:
        now = time.time() if now is None else now
        cur = q(
            "INSERT INTO instances (sop_uid, study_uid, series_uid, sop_class_uid, "
            "transfer_syntax, path, size, calling_ae, attrs, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sop_uid) DO NOTHING",
            (
                sop_uid,
                study_uid,
                series_uid,
                sop_class_uid,
                transfer_syntax,
                path,
                size,
                calling_ae,
                json.dumps(attrs),
                now,
            ),
        )
        if cur.rowcount == 0:
            return False
        # PostgreSQL: lock the study row, so an assembler in another process cannot
        # close the study between this read and the update below
        row = q(
            "SELECT state, generation FROM studies WHERE study_uid = ?" + self.dialect.for_update,
            (study_uid,),
        ).fetchone()
        if row is None and q(
            "INSERT INTO studies (study_uid, calling_ae, state, generation, "
            "quiet_period_s, instance_count, first_arrival, last_arrival) "
            "VALUES (?, ?, 'receiving', 1, ?, 1, ?, ?) ON CONFLICT (study_uid) DO NOTHING",
            (study_uid, calling_ae, quiet_period_s, now, now),
        ).rowcount == 0:  # another listener created it meanwhile
            row = q(
                "SELECT state, generation FROM studies WHERE study_uid = ?"
                + self.dialect.for_update,
                (study_uid,),
            ).fetchone()
        if row is None:
            pass  # created just above
        elif row[0] == "receiving":
            q(
                "UPDATE studies SET instance_count = instance_count + 1, last_arrival = ? "
                "WHERE study_uid = ?",
                (now, study_uid),
            )
        else:  # a late instance re-opens the study; the next result supersedes the last
            q(
                "UPDATE studies SET instance_count = instance_count + 1, last_arrival = ?, "
                "state = 'receiving', generation = generation + 1, quiet_period_s = ? "
                "WHERE study_uid = ?",
                (now, quiet_period_s, study_uid),
            )
        return True

    # -- assembly ---------------------------------------------------------------------

    def assemble_due(self, now: float | None = None) -> list[tuple[str, int]]:
        """Studies quiet for their source's quiet period become complete and get a job."""
        now = time.time() if now is None else now
        done: list[tuple[str, int]] = []
        if not self.query(
            "SELECT 1 FROM studies WHERE state = 'receiving' "
            "AND last_arrival + quiet_period_s <= ? LIMIT 1",
            (now,),
        ):
            return done  # read first: no write lock while nothing is due
        with self.tx() as q:
            rows = q(
                "SELECT study_uid, generation FROM studies WHERE state = 'receiving' "
                "AND last_arrival + quiet_period_s <= ?" + self.dialect.skip_locked,
                (now,),
            ).fetchall()
            for study_uid, generation in rows:
                q(
                    "UPDATE studies SET state = 'assembled', assembled_at = ? WHERE study_uid = ?",
                    (now, study_uid),
                )
                q(
                    "INSERT INTO jobs (study_uid, generation, state, created_at) "
                    "VALUES (?, ?, 'pending', ?)",
                    (study_uid, generation, now),
                )
                done.append((study_uid, generation))
        return done

    # -- jobs -------------------------------------------------------------------------

    def claim_job(self, worker: str, lease_s: float, now: float | None = None) -> Job | None:
        """Take the oldest pending job (or one whose worker's lease ran out).

        Never a job of a study whose other job is still running: with several workers a
        re-opened study's newer generation waits for the older one to finish, so results
        are recorded in generation order and the newer one stays current.
        """
        now = time.time() if now is None else now
        if not self.query(
            "SELECT 1 FROM jobs WHERE state = 'pending' OR (state = 'running' "
            "AND lease_until < ?) LIMIT 1",
            (now,),
        ):
            return None
        with self.tx() as q:
            rows = q(
                "SELECT j.id, j.study_uid, j.generation, j.attempts, s.generation FROM jobs j "
                "JOIN studies s ON s.study_uid = j.study_uid WHERE (j.state = 'pending' "
                "OR (j.state = 'running' AND j.lease_until < ?)) AND NOT EXISTS (SELECT 1 "
                "FROM jobs o WHERE o.study_uid = j.study_uid AND o.id <> j.id AND "
                "o.state = 'running' AND o.lease_until >= ?) ORDER BY j.id LIMIT 20"
                + self.dialect.skip_locked.replace("UPDATE", "UPDATE OF j"),
                (now, now),
            ).fetchall()
            for job_id, study_uid, generation, attempts, study_generation in rows:
                if study_generation > generation:
                    # a later instance re-opened the study: a newer job covers it
                    q(
                        "UPDATE jobs SET state = 'superseded', finished_at = ? WHERE id = ?",
                        (now, job_id),
                    )
                    continue
                q(
                    "UPDATE jobs SET state = 'running', attempts = ?, lease_until = ?, worker = ?, "
                    "started_at = ? WHERE id = ?",
                    (attempts + 1, now + lease_s, worker, now, job_id),
                )
                q(
                    "UPDATE studies SET state = 'processing' "
                    "WHERE study_uid = ? AND generation = ?",
                    (study_uid, generation),
                )
                return Job(job_id, study_uid, generation, attempts + 1)
        return None

    def defer_job(self, job_id: int, delay_s: float, now: float | None = None) -> None:
        """Hand a running job back after ``delay_s`` (its lease runs out then; any worker)."""
        now = time.time() if now is None else now
        with self.tx() as q:
            q("UPDATE jobs SET lease_until = ?, worker = NULL WHERE id = ? AND state = 'running'",
              (now + delay_s, job_id))

    def renew_job(self, job_id: int, lease_s: float) -> None:
        with self.tx() as q:
            q(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND state = 'running'",
                (time.time() + lease_s, job_id),
            )

    def study_instances(self, study_uid: str) -> list[dict]:
        rows = self.query(
            "SELECT sop_uid, series_uid, sop_class_uid, transfer_syntax, path, size, "
            "calling_ae, attrs, received_at FROM instances WHERE study_uid = ? "
            "ORDER BY received_at",
            (study_uid,),
        )
        keys = (
            "sop_uid",
            "series_uid",
            "sop_class_uid",
            "transfer_syntax",
            "path",
            "size",
            "calling_ae",
            "attrs",
            "received_at",
        )
        out = []
        for row in rows:
            d = dict(zip(keys, row, strict=True))
            d["attrs"] = json.loads(d["attrs"])
            out.append(d)
        return out

    def study(self, study_uid: str) -> dict | None:
        rows = self.query(
            "SELECT study_uid, calling_ae, state, generation, quiet_period_s, "
            "instance_count, first_arrival, last_arrival, assembled_at, processed_at "
            "FROM studies WHERE study_uid = ?",
            (study_uid,),
        )
        if not rows:
            return None
        keys = (
            "study_uid",
            "calling_ae",
            "state",
            "generation",
            "quiet_period_s",
            "instance_count",
            "first_arrival",
            "last_arrival",
            "assembled_at",
            "processed_at",
        )
        return dict(zip(keys, rows[0], strict=True))

    def complete_job(
        self, job: Job, results: list[dict], error: str | None = None, now: float | None = None
    ) -> list[int]:
        """Record a job's results and their exports in one transaction.

        ``results``: dicts with analysis, state, priority, summary, error and ``exports``
        (dicts: destination, sop_uid, sop_class_uid, series_uid, path and optionally
        channel, default "dicom"). Nothing is sent before this commits. Earlier current
        results of the same study and analysis become superseded. Returns the new export ids.
        """
        now = time.time() if now is None else now
        export_ids: list[int] = []
        with self.tx() as q:
            # still ours? A worker that stalled past its lease lost the job to another (higher
            # attempts): its late results are dropped, so a study's result is recorded once
            row = q("SELECT state, attempts FROM jobs WHERE id = ?" + self.dialect.for_update,
                    (job.id,)).fetchone()
            if row is None or row[0] != "running" or row[1] != job.attempts:
                return export_ids
            for res in results:
                rid = q(
                    "INSERT INTO results (job_id, study_uid, generation, analysis, state, "
                    "priority, summary, error, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "RETURNING id",
                    (
                        job.id,
                        job.study_uid,
                        job.generation,
                        res["analysis"],
                        res["state"],
                        res["priority"],
                        json.dumps(res["summary"]),
                        res.get("error"),
                        now,
                    ),
                ).fetchone()[0]
                if res["state"] == "current":
                    # messages of the older result not yet delivered are dropped: the HIS
                    # and RIS get the current generation only (DICOM objects still go: the
                    # new SR names the old one as its predecessor)
                    q(
                        "UPDATE exports SET state = 'superseded', lease_until = NULL "
                        "WHERE channel <> 'dicom' AND state IN ('pending', 'dead') AND "
                        "result_id IN (SELECT id FROM results WHERE study_uid = ? AND "
                        "analysis = ? AND state = 'current' AND id <> ?)",
                        (job.study_uid, res["analysis"], rid),
                    )
                    q(
                        "UPDATE results SET state = 'superseded', superseded_by = ? "
                        "WHERE study_uid = ? AND analysis = ? AND state = 'current' AND id <> ?",
                        (rid, job.study_uid, res["analysis"], rid),
                    )
                for exp in res.get("exports", []):
                    eid = q(
                        "INSERT INTO exports (result_id, study_uid, channel, destination, "
                        "sop_uid, sop_class_uid, series_uid, path, state, next_attempt_at, "
                        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?) RETURNING id",
                        (
                            rid,
                            job.study_uid,
                            exp.get("channel", "dicom"),
                            exp["destination"],
                            exp["sop_uid"],
                            exp["sop_class_uid"],
                            exp["series_uid"],
                            exp["path"],
                            now,
                            now,
                        ),
                    ).fetchone()[0]
                    export_ids.append(eid)
            q(
                "UPDATE jobs SET state = ?, error = ?, finished_at = ?, lease_until = NULL "
                "WHERE id = ?",
                ("failed" if error else "done", error, now, job.id),
            )
            q(
                "UPDATE studies SET state = 'processed', processed_at = ? WHERE study_uid = ? "
                "AND generation = ? AND state = 'processing'",
                (now, job.study_uid, job.generation),
            )
        return export_ids

    # -- exports ----------------------------------------------------------------------

    def claim_exports(self, limit: int, lease_s: float, now: float | None = None,
                      classes: Sequence[str] = (), exclude: bool = False) -> list[Export]:
        """Lease up to ``limit`` due exports, oldest first. With ``classes``: only those whose
        SOP class (or message kind) is in it, or with ``exclude`` only those not in it, so
        separate senders can take separate kinds of result."""
        now = time.time() if now is None else now
        kinds = ""
        if classes:
            kinds = (f" AND sop_class_uid {'NOT IN' if exclude else 'IN'} "
                     f"({', '.join('?' * len(classes))})")
        due = ("((state = 'pending' AND next_attempt_at <= ?) "
               "OR (state = 'sending' AND lease_until < ?))" + kinds)
        if not self.query(f"SELECT 1 FROM exports WHERE {due} LIMIT 1", (now, now, *classes)):
            return []
        with self.tx() as q:
            rows = q(
                "SELECT id, result_id, study_uid, destination, sop_uid, sop_class_uid, path, "
                f"attempts, channel FROM exports WHERE {due} ORDER BY id LIMIT ?"
                + self.dialect.skip_locked,
                (now, now, *classes, limit),
            ).fetchall()
            for row in rows:
                q(
                    "UPDATE exports SET state = 'sending', lease_until = ? WHERE id = ?",
                    (now + lease_s, row[0]),
                )
        return [Export(*row) for row in rows]

    def export_done(self, export_id: int, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.tx() as q:
            q(
                "UPDATE exports SET state = 'done', attempts = attempts + 1, done_at = ?, "
                "last_error = NULL, lease_until = NULL WHERE id = ?",
                (now, export_id),
            )

    def export_failed(
        self,
        export_id: int,
        error: str,
        max_attempts: int,
        base_delay_s: float,
        max_delay_s: float,
        now: float | None = None,
    ) -> str:
        """Count a failed attempt; back off exponentially, or dead-letter after max_attempts."""
        now = time.time() if now is None else now
        with self.tx() as q:
            attempts = (
                q("SELECT attempts FROM exports WHERE id = ?", (export_id,)).fetchone()[0] + 1
            )
            if attempts >= max_attempts:
                state, next_at = "dead", now
            else:
                state = "pending"
                next_at = now + min(max_delay_s, base_delay_s * 2 ** (attempts - 1))
            q(
                "UPDATE exports SET state = ?, attempts = ?, next_attempt_at = ?, last_error = ?, "
                "lease_until = NULL WHERE id = ?",
                (state, attempts, next_at, error[:500], export_id),
            )
        return state

    def list_exports(self, dead_only: bool = False) -> list[dict]:
        keys = (
            "id",
            "study_uid",
            "channel",
            "destination",
            "sop_uid",
            "state",
            "attempts",
            "next_attempt_at",
            "last_error",
            "created_at",
            "done_at",
        )
        sql = f"SELECT {', '.join(keys)} FROM exports"
        sql += " WHERE state = 'dead'" if dead_only else ""
        return [dict(zip(keys, r, strict=True)) for r in self.query(sql + " ORDER BY id")]

    def previous_objects(self, study_uid: str, analysis: str) -> list[tuple[str, str]]:
        """(SOP class UID, spool path) of each DICOM object of the study's current result of
        ``analysis``: what a new result supersedes (its SR lists them as predecessors)."""
        rows = self.query(
            "SELECT DISTINCT e.sop_uid, e.sop_class_uid, e.path FROM exports e "
            "JOIN results r ON r.id = e.result_id WHERE r.study_uid = ? AND r.analysis = ? "
            "AND r.state = 'current' AND e.channel = 'dicom' ORDER BY e.sop_uid",
            (study_uid, analysis),
        )
        return [(sop_class, path) for _sop, sop_class, path in rows]

    def retry_export(self, export_id: int) -> bool:
        with self.tx() as q:
            cur = q(
                "UPDATE exports SET state = 'pending', attempts = 0, next_attempt_at = ?, "
                "lease_until = NULL WHERE id = ? AND state NOT IN ('done', 'superseded')",
                (time.time(), export_id),
            )
            return cur.rowcount > 0

    def next_export_due(self) -> float | None:
        rows = self.query("SELECT MIN(next_attempt_at) FROM exports WHERE state = 'pending'")
        return rows[0][0] if rows else None

    # -- start-up and observation -----------------------------------------------------

    def resume(self) -> dict[str, int]:
        """On start: take back work a crashed process held (embedded single-process mode).

        With PostgreSQL other workers may be alive, so there the leases expire instead.
        """
        if not self.dialect.single_process:
            return {"jobs": 0, "exports": 0}
        with self.tx() as q:
            jobs = q(
                "UPDATE jobs SET state = 'pending', lease_until = NULL WHERE state = 'running'"
            ).rowcount
            q("UPDATE studies SET state = 'assembled' WHERE state = 'processing'")
            exports = q(
                "UPDATE exports SET state = 'pending', lease_until = NULL WHERE state = 'sending'"
            ).rowcount
        return {"jobs": jobs, "exports": exports}

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for table in ("studies", "jobs", "exports"):
            for state, n in self.query(f"SELECT state, COUNT(*) FROM {table} GROUP BY state"):
                out[f"{table}.{state}"] = n
        out["instances"] = self.query("SELECT COUNT(*) FROM instances")[0][0]
        return out

    def results(self, study_uid: str) -> list[dict]:
        keys = (
            "id",
            "job_id",
            "generation",
            "analysis",
            "state",
            "priority",
            "summary",
            "error",
            "created_at",
            "superseded_by",
        )
        rows = self.query(
            f"SELECT {', '.join(keys)} FROM results WHERE study_uid = ? ORDER BY id", (study_uid,)
        )
        out = []
        for r in rows:
            d = dict(zip(keys, r, strict=True))
            d["summary"] = json.loads(d["summary"])
            out.append(d)
        return out

    # --- read views for the worklist and de-identified export ---

    def recent_studies(self, limit: int) -> list[StudyView]:
        """The newest studies, each with the header of its first instance (patient, accession,
        description: recorded at ingest, see ``header.STUDY_KEYS``)."""
        first = ("(SELECT i.{} FROM instances i WHERE i.study_uid = s.study_uid "
                 "ORDER BY i.received_at LIMIT 1)")
        rows = self.query(
            "SELECT s.study_uid, s.state, s.instance_count, s.first_arrival, s.last_arrival, "
            f"s.quiet_period_s, {first.format('attrs')}, {first.format('series_uid')} "
            "FROM studies s ORDER BY s.last_arrival DESC LIMIT ?", (limit,))
        return [StudyView(*r[:6], json.loads(r[6]) if r[6] else {}, r[7] or "") for r in rows]

    def study_results(self, study_uids: list[str] | None = None,
                      states: tuple[str, ...] = ("current", "failed")) -> list[ResultView]:
        """Results in ``states`` (of these studies, else all) with their exports' progress,
        newest first."""
        where = f"r.state IN ({', '.join('?' * len(states))})"
        params: tuple = tuple(states)
        if study_uids is not None:
            if not study_uids:
                return []
            where += f" AND r.study_uid IN ({', '.join('?' * len(study_uids))})"
            params += tuple(study_uids)
        rows = self.query(
            "SELECT r.id, r.study_uid, r.analysis, r.state, r.priority, r.summary, r.created_at, "
            "COUNT(e.id), SUM(CASE WHEN e.state = 'done' THEN 1 ELSE 0 END), MAX(e.done_at) "
            "FROM results r LEFT JOIN exports e ON e.result_id = r.id AND e.channel = 'dicom' "
            f"WHERE {where} "
            "GROUP BY r.id ORDER BY r.id DESC", params)
        return [ResultView(*r[:5], json.loads(r[5]), r[6], r[7], r[8] or 0, r[9]) for r in rows]

    def study_delivery(self, study_uid: str) -> Delivery:
        """How far the study's current results got: created, exported, and which objects."""
        created = self.query(
            "SELECT MAX(created_at) FROM results WHERE study_uid = ? AND state = 'current'",
            (study_uid,))[0][0]
        rows = self.query(
            "SELECT e.sop_class_uid, e.state, e.done_at FROM exports e "
            "JOIN results r ON r.id = e.result_id WHERE e.study_uid = ? AND r.state = 'current' "
            "AND e.channel = 'dicom'",
            (study_uid,))
        done = [r for r in rows if r[1] == "done"]
        by_class: dict[str, int] = {}
        for sop_class, _, _ in done:
            by_class[sop_class] = by_class.get(sop_class, 0) + 1
        return Delivery(created, len(rows), len(done),
                        max((r[2] for r in done), default=None), by_class)

    def latest_reviews(self, study_uids: list[str] | None = None) -> dict[str, Review]:
        """Each study's latest radiologist review (agree / AI was wrong)."""
        sql = ("SELECT id, study_uid, result_id, reviewer, agrees, ai_verdict, label, reason, "
               "created_at FROM reviews")
        params: tuple = ()
        if study_uids is not None:
            if not study_uids:
                return {}
            sql += f" WHERE study_uid IN ({', '.join('?' * len(study_uids))})"
            params = tuple(study_uids)
        out: dict[str, Review] = {}
        for r in self.query(sql + " ORDER BY id", params):
            out[r[1]] = Review(r[0], r[1], r[2], r[3], bool(r[4]), *r[5:])
        return out

    def read_marks(self, study_uids: list[str]) -> dict[str, ReadMark]:
        """Who read each study first, and when."""
        if not study_uids:
            return {}
        rows = self.query(
            "SELECT study_uid, username, read_at FROM study_reads "
            f"WHERE study_uid IN ({', '.join('?' * len(study_uids))})", tuple(study_uids))
        return {r[0]: ReadMark(*r) for r in rows}

    def received_instances(self, since: float | None = None) -> list[InstanceView]:
        """Indexed instances (received on/after ``since``), oldest first."""
        sql = "SELECT sop_uid, study_uid, series_uid, path, attrs, received_at FROM instances"
        params: tuple = ()
        if since is not None:
            sql, params = sql + " WHERE received_at >= ?", (since,)
        return [InstanceView(*r[:4], json.loads(r[4]), r[5])
                for r in self.query(sql + " ORDER BY received_at", params)]

    # --- sign-in, read status and reviews: the worklist's writes ---

    def add_user(self, username: str, password_hash: str, display_name: str) -> bool:
        """A new, active user; False if the name is taken."""
        with self.tx() as q:
            return q("INSERT INTO users (username, password_hash, display_name, active, "
                     "created_at) VALUES (?, ?, ?, 1, ?) ON CONFLICT (username) DO NOTHING",
                     (username, password_hash, display_name, time.time())).rowcount > 0

    def set_user_active(self, username: str, active: bool) -> bool:
        """Enable or disable a user; disabling ends the user's sessions. False if unknown."""
        with self.tx() as q:
            found = q("UPDATE users SET active = ? WHERE username = ?",
                      (int(active), username)).rowcount > 0
            if not active:
                q("DELETE FROM sessions WHERE username = ?", (username,))
            return found

    def set_password_hash(self, username: str, password_hash: str) -> None:
        """A rehash with newer parameters, after a successful sign-in."""
        with self.tx() as q:
            q("UPDATE users SET password_hash = ? WHERE username = ?", (password_hash, username))

    def user(self, username: str) -> User | None:
        rows = self.query("SELECT username, password_hash, display_name, active FROM users "
                          "WHERE username = ?", (username,))
        return User(rows[0][0], rows[0][1], rows[0][2], bool(rows[0][3])) if rows else None

    def start_session(self, token_sha256: str, username: str, csrf_token: str,
                      expires_at: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.tx() as q:
            q("DELETE FROM sessions WHERE expires_at < ?", (now,))
            q("INSERT INTO sessions (token_sha256, username, csrf_token, created_at, expires_at) "
              "VALUES (?, ?, ?, ?, ?)", (token_sha256, username, csrf_token, now, expires_at))

    def session(self, token_sha256: str, now: float | None = None) -> Session | None:
        """A live session of an active user, else None."""
        now = time.time() if now is None else now
        rows = self.query(
            "SELECT u.username, u.display_name, s.csrf_token, s.expires_at FROM sessions s "
            "JOIN users u ON u.username = s.username WHERE s.token_sha256 = ? "
            "AND s.expires_at > ? AND u.active = 1", (token_sha256, now))
        return Session(*rows[0]) if rows else None

    def end_session(self, token_sha256: str) -> None:
        with self.tx() as q:
            q("DELETE FROM sessions WHERE token_sha256 = ?", (token_sha256,))

    def start_oidc_request(self, state_sha256: str, nonce: str, code_verifier: str,
                           redirect_uri: str, expires_at: float) -> None:
        """A pending OpenID Connect sign-in (until the provider redirects back)."""
        with self.tx() as q:
            q("DELETE FROM oidc_requests WHERE expires_at < ?", (time.time(),))
            q("INSERT INTO oidc_requests (state_sha256, nonce, code_verifier, redirect_uri, "
              "expires_at) VALUES (?, ?, ?, ?, ?)",
              (state_sha256, nonce, code_verifier, redirect_uri, expires_at))

    def take_oidc_request(self, state_sha256: str) -> tuple[str, str, str] | None:
        """(nonce, code_verifier, redirect_uri) of a live pending sign-in, used once."""
        with self.tx() as q:
            row = q("SELECT nonce, code_verifier, redirect_uri FROM oidc_requests "
                    "WHERE state_sha256 = ? AND expires_at >= ?",
                    (state_sha256, time.time())).fetchone()
            q("DELETE FROM oidc_requests WHERE state_sha256 = ?", (state_sha256,))
        return tuple(row) if row else None

    def mark_read(self, study_uid: str, username: str, now: float | None = None) -> None:
        """The first reader of a study is kept."""
        with self.tx() as q:
            q("INSERT INTO study_reads (study_uid, username, read_at) VALUES (?, ?, ?) "
              "ON CONFLICT (study_uid) DO NOTHING",
              (study_uid, username, time.time() if now is None else now))

    def record_review(self, study_uid: str, result_id: int, reviewer: str, agrees: bool,
                      ai_verdict: str, label: str | None, reason: str,
                      now: float | None = None) -> int:
        """A radiologist's review of a result; reviewing also marks the study read."""
        now = time.time() if now is None else now
        with self.tx() as q:
            rid = q("INSERT INTO reviews (study_uid, result_id, reviewer, agrees, ai_verdict, "
                    "label, reason, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (study_uid, result_id, reviewer, int(agrees), ai_verdict, label, reason,
                     now)).fetchone()[0]
            q("INSERT INTO study_reads (study_uid, username, read_at) VALUES (?, ?, ?) "
              "ON CONFLICT (study_uid) DO NOTHING", (study_uid, reviewer, now))
        return rid


# --- typed rows of the read views (above) ---


@dataclass(frozen=True)
class StudyView:
    study_uid: str
    state: str
    instance_count: int
    first_arrival: float
    last_arrival: float
    quiet_period_s: float
    header: dict  # the first instance's indexed attributes (header.INDEXED_KEYS)
    series_uid: str  # the first instance's series


@dataclass(frozen=True)
class ResultView:
    id: int
    study_uid: str
    analysis: str
    state: str
    priority: str
    summary: dict
    created_at: float
    exports: int
    exports_done: int
    last_export_at: float | None


@dataclass(frozen=True)
class Delivery:
    result_at: float | None  # the newest current result
    exports: int
    exports_done: int
    last_done_at: float | None
    done_by_sop_class: dict[str, int]


@dataclass(frozen=True)
class Review:
    id: int
    study_uid: str
    result_id: int
    reviewer: str
    agrees: bool
    ai_verdict: str
    label: str | None  # the radiologist's label where it differs from the AI's
    reason: str
    created_at: float


@dataclass(frozen=True)
class ReadMark:
    study_uid: str
    username: str
    read_at: float


@dataclass(frozen=True)
class InstanceView:
    sop_uid: str
    study_uid: str
    series_uid: str
    path: str
    attrs: dict
    received_at: float


@dataclass(frozen=True)
class User:
    username: str
    password_hash: str
    display_name: str
    active: bool


@dataclass(frozen=True)
class Session:
    username: str
    display_name: str
    csrf_token: str
    expires_at: float
