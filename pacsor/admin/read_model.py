"""The study views in SQLite (standard library), with the last applied stream sequence.

The read model is disposable: it holds nothing the PACSOR stream does not. Each batch of
events is applied in one transaction that also records the stream sequence it reached, so a
restart resumes exactly after the last committed batch, and a deleted file is rebuilt from the
start of the stream. Several admin replicas each keep their own file.

Tables:
    studies   one row per study: the columns queries filter and sort by, and the whole view
    steps     one row per study and core / destination: its state, for the state filters
    results   one row per (study, core, attempt) whose results became ready, for replays
    peers     one row per AI core and destination: when it last worked and last failed
    meta      the last applied stream sequence and the layout version of this file
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path

import msgspec

from pacsor.domain import events as ev
from pacsor.domain.study_view import (
    PeerSeen,
    StudyView,
    apply_event,
    see_peer,
    settle,
    step_durations,
)

# Bump when StudyView or the tables change: an older file is then rebuilt from the stream.
LAYOUT_VERSION = "3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    uid TEXT PRIMARY KEY,
    accession TEXT NOT NULL,
    state TEXT NOT NULL,
    received_at REAL,
    updated_at REAL,
    holds_objects INTEGER NOT NULL,
    view BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS studies_holding ON studies (holds_objects, received_at);
CREATE INDEX IF NOT EXISTS studies_received ON studies (received_at DESC, uid);
CREATE INDEX IF NOT EXISTS studies_accession ON studies (accession);
CREATE INDEX IF NOT EXISTS studies_state ON studies (state);
CREATE TABLE IF NOT EXISTS steps (
    uid TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (uid, kind, name)
);
CREATE INDEX IF NOT EXISTS steps_name ON steps (kind, name, state);
CREATE TABLE IF NOT EXISTS results (
    uid TEXT NOT NULL,
    core TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (uid, core, attempt)
);
CREATE INDEX IF NOT EXISTS results_at ON results (at);
CREATE TABLE IF NOT EXISTS peers (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    view BLOB NOT NULL,
    PRIMARY KEY (kind, name)
);
"""

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(StudyView)
_peer_decoder = msgspec.json.Decoder(PeerSeen)


class StudyFilter(msgspec.Struct, frozen=True, kw_only=True):
    """A query of the study list; every criterion is optional."""

    state: str | None = None
    core: str | None = None
    destination: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    q: str | None = None
    limit: int = 50
    offset: int = 0


class ReadyResults(msgspec.Struct, frozen=True):
    study_uid: str = msgspec.field(name="study_instance_uid")
    core: str
    attempt: int


class ReadModel:
    """One SQLite file of study views; used from one thread (the admin's event loop)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        if self._meta("layout") != LAYOUT_VERSION:
            self._reset()

    def close(self) -> None:
        self._db.close()

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _reset(self) -> None:
        """Start again, empty, in this version's layout: the stream rebuilds the rest."""
        with self._transaction():
            for table in ("studies", "steps", "results", "peers", "meta"):
                self._db.execute(f"DROP TABLE IF EXISTS {table}")
        self._db.executescript(_SCHEMA)
        with self._transaction():
            self._db.execute("INSERT INTO meta VALUES ('layout', ?)", (LAYOUT_VERSION,))
            self._db.execute("INSERT INTO meta VALUES ('sequence', '0')")

    def _transaction(self) -> sqlite3.Connection:
        # The connection as a context manager commits or rolls back; BEGIN makes it one unit.
        self._db.execute("BEGIN")
        return self._db

    @property
    def last_sequence(self) -> int:
        """The last stream sequence applied: resume after it."""
        return int(self._meta("sequence") or 0)

    def apply(
        self,
        recorded: Sequence[tuple[int, ev.Event]],
        through: int,
        on_step: Callable[[str, float], None] | None = None,
    ) -> list[StudyView]:
        """Apply events in stream order and record `through` (the last sequence read, which
        may be an unreadable event's) in the same transaction; returns the changed views.

        `on_step(name, seconds)` hears the duration of each step an event ends."""
        applied = self.last_sequence
        if through <= applied:
            return []
        uids = {event.study_uid for _, event in recorded if event.study_uid}
        views = self._load(uids)
        changed: dict[str, StudyView] = {}
        peers = self._peers()
        seen: dict[tuple[str, str], PeerSeen] = {}
        for sequence, event in recorded:
            if sequence <= applied:
                continue  # a batch read again after a restart: seen already
            peer = see_peer(peers, event)
            if peer is not None:
                seen[(peer.kind, peer.name)] = peer
            uid = event.study_uid
            if not uid:
                continue
            view = views.get(uid)
            if view is None:
                view = views[uid] = StudyView(study_uid=uid)
            if not apply_event(view, sequence, event):
                continue
            changed[uid] = view
            if on_step is not None:
                for name, seconds in step_durations(view, event):
                    on_step(name, seconds)
        for view in changed.values():
            settle(view)
        with self._transaction() as db:
            self._write(db, changed.values())
            db.executemany(
                "INSERT OR REPLACE INTO peers VALUES (?, ?, ?)",
                [(kind, name, _encoder.encode(p)) for (kind, name), p in seen.items()],
            )
            db.execute("UPDATE meta SET value = ? WHERE key = 'sequence'", (str(through),))
        return list(changed.values())

    def _load(self, uids: Iterable[str]) -> dict[str, StudyView]:
        wanted = list(uids)
        views: dict[str, StudyView] = {}
        for start in range(0, len(wanted), 500):
            part = wanted[start : start + 500]
            marks = ",".join("?" * len(part))
            for uid, blob in self._db.execute(
                f"SELECT uid, view FROM studies WHERE uid IN ({marks})", part
            ):
                views[uid] = _decoder.decode(blob)
        return views

    def _peers(self) -> dict[tuple[str, str], PeerSeen]:
        rows = self._db.execute("SELECT kind, name, view FROM peers").fetchall()
        return {(kind, name): _peer_decoder.decode(blob) for kind, name, blob in rows}

    def peers(self) -> list[PeerSeen]:
        """Every AI core and destination seen in the stream, cores first."""
        return sorted(self._peers().values(), key=lambda p: (p.kind, p.name))

    def _write(self, db: sqlite3.Connection, views: Iterable[StudyView]) -> None:
        rows: list[tuple[object, ...]] = []
        steps: list[tuple[str, str, str, str]] = []
        results: list[tuple[str, str, int, float]] = []
        uids: list[tuple[str]] = []
        for view in views:
            uids.append((view.study_uid,))
            rows.append(
                (
                    view.study_uid,
                    view.accession_number,
                    view.state,
                    _epoch(view.first_received_at),
                    _epoch(view.updated_at),
                    int(view.holds_objects()),
                    _encoder.encode(view),
                )
            )
            steps.extend((view.study_uid, "core", c.core, c.state) for c in view.cores)
            steps.extend(
                (view.study_uid, "destination", d.destination, d.state) for d in view.destinations
            )
            results.extend(
                (view.study_uid, r.core, r.attempt, r.at.timestamp())
                for r in view.results_made
                if not r.removed
            )
        db.executemany("INSERT OR REPLACE INTO studies VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        db.executemany("DELETE FROM steps WHERE uid = ?", uids)
        db.executemany("DELETE FROM results WHERE uid = ?", uids)
        db.executemany("INSERT OR REPLACE INTO steps VALUES (?, ?, ?, ?)", steps)
        db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?)", results)

    # --- queries ------------------------------------------------------------------------

    def get(self, uid: str) -> StudyView | None:
        row = self._db.execute("SELECT view FROM studies WHERE uid = ?", (uid,)).fetchone()
        return None if row is None else _decoder.decode(row[0])

    def query(self, where: StudyFilter) -> tuple[list[StudyView], int]:
        """The page of studies matching `where`, newest first, and how many match in all."""
        clauses: list[str] = []
        params: list[object] = []
        # With a core or a destination, `state` is that step's state; otherwise the study's.
        step_state_used = False
        for kind, name in (("core", where.core), ("destination", where.destination)):
            if name is None:
                continue
            clause = (
                "EXISTS (SELECT 1 FROM steps s"
                " WHERE s.uid = studies.uid AND s.kind = ? AND s.name = ?"
            )
            params.extend((kind, name))
            if where.state is not None:
                clause += " AND s.state = ?"
                params.append(where.state)
                step_state_used = True
            clauses.append(clause + ")")
        if where.state is not None and not step_state_used:
            clauses.append("state = ?")
            params.append(where.state)
        if where.since is not None:
            clauses.append("received_at >= ?")
            params.append(where.since.timestamp())
        if where.until is not None:
            clauses.append("received_at < ?")
            params.append(where.until.timestamp())
        if where.q:
            clauses.append("(instr(uid, ?) > 0 OR instr(accession, ?) > 0)")
            params.extend((where.q, where.q))
        condition = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        total = int(
            self._db.execute(f"SELECT count(*) FROM studies {condition}", params).fetchone()[0]
        )
        rows = self._db.execute(
            f"SELECT view FROM studies {condition} ORDER BY received_at DESC, uid LIMIT ? OFFSET ?",
            [*params, where.limit, where.offset],
        ).fetchall()
        return [_decoder.decode(blob) for (blob,) in rows], total

    def results_ready_since(self, since: datetime, core: str | None = None) -> list[ReadyResults]:
        """Every (study, core, attempt) whose results became ready at or after `since`."""
        sql = "SELECT uid, core, attempt FROM results WHERE at >= ?"
        params: list[object] = [since.timestamp()]
        if core is not None:
            sql += " AND core = ?"
            params.append(core)
        rows = self._db.execute(sql + " ORDER BY at, uid", params).fetchall()
        return [ReadyResults(uid, c, int(a)) for uid, c, a in rows]

    def holding_objects(self, limit: int = 500, offset: int = 0) -> list[StudyView]:
        """Studies whose stored objects may still be there, oldest first: retention's work."""
        rows = self._db.execute(
            "SELECT view FROM studies WHERE holds_objects = 1 "
            "ORDER BY received_at, uid LIMIT ? OFFSET ?",
            (limit, offset),
        ).fetchall()
        return [_decoder.decode(blob) for (blob,) in rows]

    def state_counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT state, count(*) FROM studies GROUP BY state").fetchall()
        return {str(state): int(n) for state, n in rows}


def _epoch(at: datetime | None) -> float | None:
    return None if at is None else at.timestamp()
