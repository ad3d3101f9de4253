"""Versioned schema migrations, applied at start, safe from several processes at once.

Each migration is a list of statements per dialect; ``schema_version`` records what is
applied. SQLite serialises through ``BEGIN IMMEDIATE``; PostgreSQL through an advisory
transaction lock, so two replicas starting together apply each migration once. A
database whose schema is newer than the last migration known here is refused: a newer
crc set it up.
"""

from __future__ import annotations

from typing import Any

from ...errors import Conflict
from .base import Tx

__all__ = ["MIGRATIONS", "migrate"]

_AUTOINC = {"sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT", "postgresql": "BIGSERIAL PRIMARY KEY"}
_REAL = {"sqlite": "REAL", "postgresql": "DOUBLE PRECISION"}
_INT = {"sqlite": "INTEGER", "postgresql": "BIGINT"}


def _v1(d: str) -> list[str]:
    real, auto, integer = _REAL[d], _AUTOINC[d], _INT[d]
    return [
        f"""CREATE TABLE users (
            id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, created {real} NOT NULL)""",
        f"""CREATE TABLE master_tokens (
            id TEXT PRIMARY KEY, user_id TEXT NOT NULL REFERENCES users(id),
            name TEXT NOT NULL, hash TEXT NOT NULL, created {real} NOT NULL, revoked {real})""",
        "CREATE UNIQUE INDEX master_tokens_name ON master_tokens(user_id, name) "
        "WHERE revoked IS NULL",
        f"""CREATE TABLE groups (
            id TEXT PRIMARY KEY, user_id TEXT NOT NULL REFERENCES users(id),
            name TEXT NOT NULL, created {real} NOT NULL, expires {real}, deleted {real},
            settings TEXT NOT NULL DEFAULT '{{}}')""",
        "CREATE UNIQUE INDEX groups_live_name ON groups(user_id, name) WHERE deleted IS NULL",
        f"""CREATE TABLE machines (
            id TEXT PRIMARY KEY, group_id TEXT NOT NULL REFERENCES groups(id),
            name TEXT NOT NULL, labels TEXT NOT NULL DEFAULT '{{}}', state TEXT NOT NULL,
            key_id TEXT UNIQUE, key_hash TEXT, key_expires {real}, key_used {real},
            cred_id TEXT UNIQUE, cred_hash TEXT,
            facts TEXT, peer_ip TEXT, progress TEXT, last_seen {real}, connected_by TEXT,
            out_next {integer} NOT NULL DEFAULT 1, in_done {integer} NOT NULL DEFAULT 0,
            UNIQUE (group_id, name))""",
        f"""CREATE TABLE outbox (
            machine_id TEXT NOT NULL, seq {integer} NOT NULL, type TEXT NOT NULL,
            job_id TEXT, envelope TEXT NOT NULL, PRIMARY KEY (machine_id, seq))""",
        f"""CREATE TABLE jobs (
            id TEXT PRIMARY KEY, group_id TEXT NOT NULL REFERENCES groups(id),
            spec TEXT NOT NULL, target TEXT NOT NULL, created {real} NOT NULL,
            created_by TEXT NOT NULL)""",
        f"""CREATE TABLE job_targets (
            job_id TEXT NOT NULL REFERENCES jobs(id), machine_id TEXT NOT NULL,
            machine TEXT NOT NULL, status TEXT NOT NULL, exit_code {integer}, reason TEXT,
            output_bytes {integer} NOT NULL DEFAULT 0, updated {real} NOT NULL,
            PRIMARY KEY (job_id, machine_id))""",
        f"""CREATE TABLE events (
            id {auto}, group_id TEXT NOT NULL, created {real} NOT NULL, type TEXT NOT NULL,
            machine TEXT, job_id TEXT, data TEXT NOT NULL)""",
        "CREATE INDEX events_group ON events(group_id, id)",
        "CREATE INDEX events_job ON events(job_id, id)",
        f"""CREATE TABLE audit (
            id {auto}, created {real} NOT NULL, user_id TEXT, actor TEXT NOT NULL,
            action TEXT NOT NULL, group_name TEXT, detail TEXT NOT NULL)""",
    ]


def _v2(d: str) -> list[str]:
    """File transfer: who may use which blob, and the blob a file job moves."""
    real, integer = _REAL[d], _INT[d]
    return [
        f"""CREATE TABLE blob_owners (
            user_id TEXT NOT NULL, sha TEXT NOT NULL, size {integer} NOT NULL,
            created {real} NOT NULL, PRIMARY KEY (user_id, sha))""",
        "ALTER TABLE jobs ADD COLUMN blob TEXT",
        "ALTER TABLE job_targets ADD COLUMN blob TEXT",
    ]


def _v3(d: str) -> list[str]:
    """The group key/value store for coordination."""
    real, integer = _REAL[d], _INT[d]
    return [
        f"""CREATE TABLE kv (
            group_id TEXT NOT NULL REFERENCES groups(id), key TEXT NOT NULL,
            value TEXT NOT NULL, version {integer} NOT NULL, updated {real} NOT NULL,
            updated_by TEXT NOT NULL, PRIMARY KEY (group_id, key))""",
    ]


def _v4(d: str) -> list[str]:
    """Opt-in teardown at the provider when a group's TTL passes (the provider API key,
    encrypted with the server's teardown key; dropped once the teardown is done)."""
    real, integer = _REAL[d], _INT[d]
    return [
        f"""CREATE TABLE teardowns (
            group_id TEXT PRIMARY KEY REFERENCES groups(id), provider TEXT NOT NULL,
            secret TEXT, status TEXT NOT NULL, attempts {integer} NOT NULL DEFAULT 0,
            next_try {real} NOT NULL DEFAULT 0, claimed_until {real}, last_error TEXT,
            result TEXT, updated {real} NOT NULL)""",
    ]


def _v5(d: str) -> list[str]:
    """File contents in the database too, so that several replicas need no shared disk
    (PostgreSQL; a single SQLite server keeps them on its disk only)."""
    real, integer = _REAL[d], _INT[d]
    data = {"sqlite": "BLOB", "postgresql": "BYTEA"}[d]
    return [
        f"""CREATE TABLE blob_chunks (
            sha TEXT NOT NULL, n {integer} NOT NULL, data {data} NOT NULL,
            PRIMARY KEY (sha, n))""",
        f"""CREATE TABLE blobs (
            sha TEXT PRIMARY KEY, size {integer} NOT NULL, chunks {integer} NOT NULL,
            created {real} NOT NULL)""",
    ]


def _v6(d: str) -> list[str]:
    """Poison messages: failed attempts at applying a machine's next message (after
    ``MAX_ATTEMPTS`` it is given up instead of blocking the machine's stream)."""
    integer = _INT[d]
    return [
        f"ALTER TABLE machines ADD COLUMN in_attempt_seq {integer} NOT NULL DEFAULT 0",
        f"ALTER TABLE machines ADD COLUMN in_attempts {integer} NOT NULL DEFAULT 0",
    ]


def _v7(d: str) -> list[str]:
    """The hash of a spent (used or revoked) enrollment key, so that a refusal says
    "used" or "revoked" only to whoever holds the key itself; an index for pruning
    events by age."""
    return [
        "ALTER TABLE machines ADD COLUMN key_spent TEXT",
        "CREATE INDEX events_created ON events(created)",
    ]


def _v8(d: str) -> list[str]:
    """The dashboard: browser sessions (a cookie; dies with the master token that opened
    it), the step graph a `crc up` run reports, and the time of a machine's last state
    change (a partial index: only ``machine.state`` events are in it)."""
    real, integer = _REAL[d], _INT[d]
    return [
        f"""CREATE TABLE sessions (
            id TEXT PRIMARY KEY, hash TEXT NOT NULL, user_id TEXT NOT NULL REFERENCES users(id),
            token_id TEXT NOT NULL, created {real} NOT NULL, expires {real} NOT NULL)""",
        f"""CREATE TABLE runs (
            group_id TEXT PRIMARY KEY REFERENCES groups(id), run_id TEXT NOT NULL,
            scenario TEXT NOT NULL, state TEXT NOT NULL, phase TEXT NOT NULL,
            message TEXT, started_by TEXT NOT NULL, started {real} NOT NULL,
            updated {real} NOT NULL, finished {real})""",
        f"""CREATE TABLE run_steps (
            group_id TEXT NOT NULL REFERENCES groups(id), name TEXT NOT NULL,
            position {integer} NOT NULL, kind TEXT NOT NULL, target TEXT NOT NULL,
            needs TEXT NOT NULL, retries {integer} NOT NULL, state TEXT NOT NULL,
            attempt {integer} NOT NULL DEFAULT 0, started {real}, finished {real},
            seconds {real}, message TEXT, PRIMARY KEY (group_id, name))""",
        "CREATE INDEX events_machine_state ON events(group_id, machine) "
        "WHERE type = 'machine.state'",
    ]


def _v9(d: str) -> list[str]:
    """Rate control (``crc run --max-concurrency`` ...): a job's rules, when the server
    must look at it again (a batch wait over, its delivery deadline), and the targets
    still held back (no ``job.run`` queued for them yet)."""
    real = _REAL[d]
    return [
        "ALTER TABLE jobs ADD COLUMN rollout TEXT",
        f"ALTER TABLE jobs ADD COLUMN rollout_check {real}",
        "ALTER TABLE job_targets ADD COLUMN held INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX jobs_rollout_check ON jobs(rollout_check) WHERE rollout_check IS NOT NULL",
    ]


def _v10(d: str) -> list[str]:
    """Shell session recordings in the database, in chunks written as the session goes,
    so that any replica serves any recording and one outlives the replica that carried
    its session (``updated``: when its last chunk was written, for retention)."""
    real, integer = _REAL[d], _INT[d]
    data = {"sqlite": "BLOB", "postgresql": "BYTEA"}[d]
    return [
        f"""CREATE TABLE recordings (
            stream TEXT PRIMARY KEY, user_id TEXT NOT NULL, group_id TEXT NOT NULL,
            size {integer} NOT NULL, chunks {integer} NOT NULL, created {real} NOT NULL,
            updated {real} NOT NULL)""",
        "CREATE INDEX recordings_updated ON recordings(updated)",
        "CREATE INDEX recordings_group ON recordings(group_id)",
        f"""CREATE TABLE recording_chunks (
            stream TEXT NOT NULL, n {integer} NOT NULL, data {data} NOT NULL,
            PRIMARY KEY (stream, n))""",
    ]


def _v11(d: str) -> list[str]:
    """The hash of the nonce an agent sent with its enrollment: the same key with the
    same nonce may enroll again (the answer was lost) until the machine connects."""
    return ["ALTER TABLE machines ADD COLUMN enroll_nonce TEXT"]


def _v12(d: str) -> list[str]:
    """Replicas' leases and the streams each carries, so that the streams of a replica
    killed (``kill -9``: no end written) are closed as cut by another once its lease
    expired (ops/sessions.py). A server on SQLite, alone, closes them at start."""
    real = _REAL[d]
    return [
        f"CREATE TABLE replicas (id TEXT PRIMARY KEY, seen {real} NOT NULL)",
        f"""CREATE TABLE open_streams (
            stream TEXT PRIMARY KEY, replica TEXT NOT NULL, created {real} NOT NULL,
            user_id TEXT, actor TEXT NOT NULL, group_name TEXT, detail TEXT NOT NULL)""",
        "CREATE INDEX open_streams_created ON open_streams(created)",
    ]


def _v13(d: str) -> list[str]:
    """The targets still under way, by when they last changed: the server ends those
    whose machine reported no end long after their timeout (ops/overdue.py)."""
    return [
        "CREATE INDEX job_targets_open ON job_targets(updated) "
        "WHERE status IN ('delivered', 'running')"
    ]


def _v14(d: str) -> list[str]:
    """When the machine's inbox last moved (a message of it applied): a connected
    machine that keeps reporting is not taken for hung (ops/overdue.py). Never NULL:
    a row read ahead on PostgreSQL follows an update only of a column it knows the type
    of (store/pg_tx.py ``RowCache``)."""
    return [f"ALTER TABLE machines ADD COLUMN last_in {_REAL[d]} NOT NULL DEFAULT 0"]


def _v15(d: str) -> list[str]:
    """When a ``--sync-hosts`` group's sync window ends: its next automatic hosts sync
    may start, and the server looks whether its addresses changed meanwhile
    (ops/hostsync.py). NULL: no window open."""
    return [
        f"ALTER TABLE groups ADD COLUMN hosts_due {_REAL[d]}",
        "CREATE INDEX groups_hosts_due ON groups(hosts_due) WHERE hosts_due IS NOT NULL",
    ]


def _v16(d: str) -> list[str]:
    """How long a ``--sync-hosts`` group's open sync window is: it doubles while changes
    keep coming (NULL: none open, the next is the shortest); and the jobs of a group by
    who started them: each automatic sync finds the group's older ones to forget
    (ops/hostsync.py) without reading the group's other jobs."""
    return [
        f"ALTER TABLE groups ADD COLUMN hosts_window {_REAL[d]}",
        "CREATE INDEX jobs_group ON jobs(group_id, created_by, created)",
    ]


def _v17(d: str) -> list[str]:
    """Which user wrote a key the master wrote (``updated_by`` says ``master``, or the
    machine's name, which a user's name could equal). NULL: a machine wrote it, or the
    master did before this column was added."""
    return ["ALTER TABLE kv ADD COLUMN updated_user TEXT"]


def _v18(d: str) -> list[str]:
    """What every replica of the database must share (store/identity.py): the
    fingerprint of the certificate they serve, a check value of their teardown key
    (never the key), recorded by the first replica to start. Empty until then, also in
    a database made before: the first replica to start after the upgrade records."""
    return [
        f"""CREATE TABLE replica_identity (
            name TEXT PRIMARY KEY, value TEXT NOT NULL, recorded {_REAL[d]} NOT NULL)""",
    ]


def _v19(d: str) -> list[str]:
    """The enrollment keys ``crc bootstrap`` replaced (ops/keys.py): their id and hash,
    so that whoever still presents one, with its secret, hears "replaced by a newer key"
    rather than "rejected" (ops/enrollment.py). Kept as long as their machine's row."""
    return [
        f"""CREATE TABLE replaced_keys (
            key_id TEXT PRIMARY KEY,
            machine_id TEXT NOT NULL REFERENCES machines(id) ON DELETE CASCADE,
            key_hash TEXT NOT NULL, replaced {_REAL[d]} NOT NULL)""",
        "CREATE INDEX replaced_keys_machine ON replaced_keys(machine_id)",
    ]


MIGRATIONS = [
    (1, _v1),
    (2, _v2),
    (3, _v3),
    (4, _v4),
    (5, _v5),
    (6, _v6),
    (7, _v7),
    (8, _v8),
    (9, _v9),
    (10, _v10),
    (11, _v11),
    (12, _v12),
    (13, _v13),
    (14, _v14),
    (15, _v15),
    (16, _v16),
    (17, _v17),
    (18, _v18),
    (19, _v19),
]


def migrate(tx: Tx, dialect: str, raw: Any = None) -> int:
    """Apply missing migrations; return the schema version now in force."""
    if dialect == "sqlite":
        raw.execute("BEGIN IMMEDIATE")
    else:
        tx.execute("SELECT pg_advisory_xact_lock(7244101)")
    try:
        tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = tx.one("SELECT MAX(version) AS v FROM schema_version")
        current = int(row["v"]) if row and row["v"] is not None else 0
        known = MIGRATIONS[-1][0]
        if current > known:
            # A newer crc set this database up: what it stores, this one would misread
            # or overwrite (an older replica beside newer ones, a downgrade).
            raise Conflict(
                f"the database's schema is version {current}, newer than this crc knows "
                f"({known}): a newer crc server set it up; run that version or a later one"
            )
        for version, statements in MIGRATIONS:
            if version > current:
                for sql in statements(dialect):
                    tx.execute(sql)
                tx.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                current = version
        if dialect == "sqlite":
            raw.execute("COMMIT")
    except BaseException:
        if dialect == "sqlite":
            raw.execute("ROLLBACK")
        raise
    return current
