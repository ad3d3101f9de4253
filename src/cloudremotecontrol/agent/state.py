"""What the agent keeps on the machine, in its state directory.

    credential.json  server URL, pinned fingerprint and certificate, machine credential
                     (mode 0600 / SYSTEM+Administrators only)
    agent.db         SQLite: messages not yet acknowledged by the server (outbox), the
                     highest server seq processed and failed attempts at the next one,
                     the jobs started (at-most-once), messages given up (dead letters),
                     user messages for scripts, the ids of the control requests carried
                     out (``crc agent emit/progress/kv set``, answered again rather than
                     done twice), flags

Every change that the server will rely on is committed before it is acknowledged or
sent, so a kill -9 or a reboot loses nothing the agent promised. The rules of the two
numbered streams are ``protocol/delivery.py``'s: this module only stores what they need
(``AgentOutbox``, ``AgentInbox``) and runs them in its transactions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidInput
from ..protocol.delivery import Inbox, InboxStore, Outbox, OutboxStore
from ..protocol.frames import Msg, renumber_frame, write_frame
from ..protocol.messages import Envelope, SystemReady
from .lock import unusable_state_dir

__all__ = [
    "AgentState",
    "Credential",
    "dirs_to_make",
    "discard_made_state_dir",
    "messages_to_forget",
    "remove_key_file",
]

# The control requests carried out that are remembered (their ids, to answer one sent
# again without doing it twice): the last MAX_REQUEST_IDS, none older than a day.
MAX_REQUEST_IDS = 10_000
KEEP_REQUEST_IDS_SECONDS = 86400.0
# The user messages kept for scripts (`crc agent wait-message`), whoever sent them: at
# most this many bytes of envelopes (`crc agent run --keep-messages-mib`) and this many
# messages. A peer's messages are acknowledged as they arrive, so the server's bound on
# what a peer has not acknowledged does not bound what its disk keeps: this does.
DEFAULT_KEEP_MESSAGES_MIB = 64.0
MAX_KEPT_MESSAGES = 10_000
DROP_WARNING_SECONDS = 60.0  # at most one warning a minute that messages were forgotten
WAL_CHECKPOINT_PAGES = 64  # pages of the write-ahead log (256 KiB) that start a checkpoint
WAL_KEEP_BYTES = 256 * 1024  # what the log file keeps of its size once checkpointed


def remove_key_file(key_file: str) -> str | None:
    """Remove the enrollment key file once the machine is enrolled (its key is used up,
    or not needed): a regular file only. A link, a device or a pipe (``--key-file
    /dev/stdin``, fed by a script) is left where it is. Returns why nothing was removed,
    or None."""
    import stat

    try:
        st = os.lstat(key_file)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return exc.strerror or str(exc)
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file: left as it is"
    try:
        os.unlink(key_file)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


@dataclass
class Credential:
    url: str
    credential: str
    machine: str
    group: str
    fingerprint: str | None = None
    cert_pem: str | None = None
    # The group's opt-outs ("shell", "forward") as enrollment granted them: the agent
    # refuses such streams for good, whatever the server asks later (agent/streams.py).
    streams_off: list[str] = field(default_factory=list)


# What the agent makes in a new state directory before it enrolls: its lock and its
# database (with SQLite's journals).
FRESH_STATE_FILES = frozenset(
    {"agent.lock", "agent.db", "agent.db-wal", "agent.db-shm", "agent.db-journal"}
)


def dirs_to_make(state_dir: Path) -> list[Path]:
    """``state_dir`` and those of its parents that do not exist yet, deepest first: the
    directories a command that makes ``state_dir`` creates."""
    made: list[Path] = []
    for path in (Path(state_dir).absolute(), *Path(state_dir).absolute().parents):
        if os.path.lexists(path):
            break
        made.append(path)
    return made


def discard_made_state_dir(made: list[Path]) -> bool:
    """Remove the state directory a command made (``made``: ``dirs_to_make`` before it
    made it) and then refused to use before it kept anything there: nothing is enrolled
    and no key was presented (``AgentState.unused``, the caller's to check). Only a
    directory that holds nothing but the agent's own fresh files (FRESH_STATE_FILES) is
    touched: those files go, then each directory made, as long as it is empty. True if
    the state directory is gone."""
    if not made:
        return False
    state_dir = made[0]
    try:
        names = os.listdir(state_dir)
    except OSError:
        return False
    if not FRESH_STATE_FILES.issuperset(names):
        return False  # something the agent did not put there: left as it is
    for name in names:
        with contextlib.suppress(OSError):  # Windows: the lock's file while it is open
            os.unlink(state_dir / name)
    for path in made:
        try:
            os.rmdir(path)
        except OSError:
            return path is not state_dir
    return True


def read_credential(state_dir: Path) -> Credential | None:
    """The credential kept in ``state_dir`` (None if the machine never enrolled there).
    InvalidInput (exit 2) for one that cannot be used: damaged (not JSON, not the
    credential's fields, a directory), or a state directory that cannot be read (a file
    in its path, no permission). ``crc agent run`` and ``crc agent install`` read it
    alike, without opening the agent's database (a running agent owns it)."""
    path = Path(state_dir) / "credential.json"
    damaged = InvalidInput(
        f"{path} is damaged: remove the state directory and enroll again with a new key"
    )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise damaged from None
    except OSError as exc:
        if isinstance(exc, PermissionError) and path.is_dir():  # Windows: a directory
            raise damaged from None
        raise unusable_state_dir(Path(state_dir), exc) from None
    except ValueError:  # not JSON, not UTF-8
        raise damaged from None
    if not isinstance(data, dict):
        raise damaged
    try:
        return Credential(**data)
    except TypeError:  # a field missing, or one the credential has not
        raise damaged from None


log = logging.getLogger("crc.agent")


def messages_to_forget(
    kept: Iterable[tuple[int, int]], excess_bytes: int, excess_count: int
) -> list[int]:
    """The numbers of the stored messages to forget, taken from ``kept`` (``(number,
    size)``, in the order they are to go) until ``excess_bytes`` and ``excess_count``
    are made up; none if neither is positive."""
    out: list[int] = []
    for n, size in kept:
        if excess_bytes <= 0 and excess_count <= 0:
            break
        out.append(n)
        excess_bytes -= size
        excess_count -= 1
    return out


class AgentState:
    def __init__(
        self,
        state_dir: str | Path,
        protect: Any = None,
        keep_messages_mib: float = DEFAULT_KEEP_MESSAGES_MIB,
        keep_messages_count: int = MAX_KEPT_MESSAGES,
    ) -> None:
        """``keep_messages_mib`` and ``keep_messages_count`` bound the user messages
        kept (``make_room_for``): a ``keep_messages_mib`` of 0 lifts both, a
        ``keep_messages_count`` of 0 the count only."""
        self.dir = Path(state_dir)
        self._protect = protect
        self.keep_messages_bytes = int(keep_messages_mib * (1 << 20))
        self.keep_messages_count = keep_messages_count
        self._forgotten = 0  # messages forgotten for room since the last warning
        self._warned = -DROP_WARNING_SECONDS  # time.monotonic() of that warning
        try:
            self.db = self._open()
        except sqlite3.OperationalError as exc:  # cannot open, read-only, disk full
            raise InvalidInput(
                f"cannot use state directory {self.dir}: {exc}: give a writable directory "
                "with --state-dir (or CRC_AGENT_STATE_DIR)"
            ) from None
        except sqlite3.DatabaseError as exc:
            # A damaged file (a disk or file system fault, a copy cut short): one clear
            # line, not a traceback the service manager restarts for ever.
            raise InvalidInput(
                f"{self.dir / 'agent.db'} is damaged ({exc}): move the state directory "
                "away and enroll again with a new key"
            ) from None
        except OSError as exc:
            raise unusable_state_dir(self.dir, exc) from None
        self._depth = 0
        self.outbox: Outbox[Envelope] = Outbox(AgentOutbox(self))
        self.inbox = Inbox(AgentInbox(self))

    def _open(self) -> sqlite3.Connection:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        db_path = self.dir / "agent.db"
        os.close(os.open(db_path, os.O_RDWR | os.O_CREAT, 0o600))  # SQLite's journals follow
        os.chmod(db_path, 0o600)
        db = sqlite3.connect(db_path, isolation_level=None)
        try:
            self._schema(db)
        except BaseException:
            db.close()
            raise
        return db

    @staticmethod
    def _schema(db: sqlite3.Connection) -> None:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        # A small write-ahead log, given back after each checkpoint: SQLite's default
        # (checkpoint at 1,000 pages, 4 MiB, the file kept at its largest) took up to
        # 4 MiB of the disk before it gave anything back, so on a disk that had been
        # full, the few MiB freed for the agent went into the log before any checkpoint
        # could move it, and every later write failed for want of room it held itself.
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        db.execute(f"PRAGMA journal_size_limit={WAL_KEEP_BYTES}")
        db.executescript(
            """
            CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, frame TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, state TEXT NOT NULL,
                                             created REAL NOT NULL, proc TEXT);
            CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS messages (n INTEGER PRIMARY KEY AUTOINCREMENT,
                                                 type TEXT NOT NULL, sender TEXT NOT NULL,
                                                 envelope TEXT NOT NULL, consumed INTEGER
                                                 NOT NULL DEFAULT 0, size INTEGER);
            CREATE TABLE IF NOT EXISTS dead_letters (seq INTEGER PRIMARY KEY,
                                                     type TEXT NOT NULL, id TEXT,
                                                     reason TEXT NOT NULL,
                                                     attempts INTEGER NOT NULL,
                                                     created REAL NOT NULL);
            CREATE TABLE IF NOT EXISTS control_requests (n INTEGER PRIMARY KEY AUTOINCREMENT,
                                                         id TEXT NOT NULL UNIQUE,
                                                         reply TEXT NOT NULL,
                                                         created REAL NOT NULL,
                                                         pending TEXT);
            """
        )
        if "proc" not in {r[1] for r in db.execute("PRAGMA table_info(jobs)")}:
            db.execute("ALTER TABLE jobs ADD COLUMN proc TEXT")  # state of an older agent
        if "size" not in {r[1] for r in db.execute("PRAGMA table_info(messages)")}:
            db.execute("ALTER TABLE messages ADD COLUMN size INTEGER")  # an older agent's
        # Messages an older agent stored have no size yet. The index holds every column
        # the bound reads, so adding it up never reads the envelopes.
        db.execute("UPDATE messages SET size = length(CAST(envelope AS BLOB)) WHERE size IS NULL")
        db.execute("CREATE INDEX IF NOT EXISTS messages_kept ON messages (consumed, n, size)")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One SQLite transaction (``BEGIN IMMEDIATE``); nested calls join it."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self.db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self.db.execute("ROLLBACK")
            raise
        self._depth = 0
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error:
            # A COMMIT that failed (a full disk) may leave the transaction open: end it,
            # so that the next one can begin once there is room again.
            if self.db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
            raise

    # -- credential ---------------------------------------------------------------------
    @property
    def credential_path(self) -> Path:
        return self.dir / "credential.json"

    def load_credential(self) -> Credential | None:
        return read_credential(self.dir)

    def unused(self) -> bool:
        """Nothing kept here yet: no credential, and no enrollment nonce (no key was
        presented to a server with it, whose answer might still be needed)."""
        try:
            return self.get("enroll_nonce") is None and not os.path.lexists(self.credential_path)
        except sqlite3.Error:
            return False

    def save_credential(self, cred: Credential) -> None:
        tmp = self.credential_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(cred), fh)
            fh.flush()
            os.fsync(fh.fileno())
        if self._protect is not None:
            self._protect(str(tmp))
        os.replace(tmp, self.credential_path)

    def enroll_nonce(self) -> str:
        """This state dir's enrollment nonce, made and committed durably (fsync'd) on
        first use: sent with the key, it lets this agent enroll again if the server's
        answer was lost (server/ops/enrollment.py). Never logged."""
        nonce = self.get("enroll_nonce")
        if nonce is not None:
            return nonce
        nonce = secrets.token_urlsafe(32)
        # WAL with synchronous=NORMAL may lose the last commits at a power loss: this one
        # must be on disk before the key is presented.
        self.db.execute("PRAGMA synchronous=FULL")
        try:
            with self.transaction():
                self.put("enroll_nonce", nonce)
        finally:
            self.db.execute("PRAGMA synchronous=NORMAL")
        return nonce

    # -- flags --------------------------------------------------------------------------
    def get(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def put(self, key: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT(key) "
            "DO UPDATE SET value = excluded.value",
            (key, value),
        )

    @property
    def processed(self) -> int:
        return self.inbox.processed

    # -- outbox (agent -> server) -------------------------------------------------------
    def enqueue(
        self,
        env: Envelope,
        *,
        job_done: str | None = None,
        job_process: tuple[str, str | None] | None = None,
        request_id: str | None = None,
    ) -> tuple[int, str]:
        """Persist ``env`` as the next numbered message; optionally mark a job done in the
        same transaction (so a result and the job's end are never separated), or record a
        running job's process (``(job_id, Platform.process_identity)``, for
        ``interrupted_jobs``), or record the control request that sends it as carried
        out (``request_id``, answered ``{}`` if sent again: ``request_reply``). A
        ``system.ready`` records the machine as ready, and its number (``ready_seq``:
        the hello says ready once the server has it), with it."""
        with self.transaction():
            seq, frame = self.outbox.add(env)
            if env.type == SystemReady.TYPE:
                self.put("ready", "1")
                self.put("ready_seq", str(seq))
            if request_id is not None:
                self.record_request(request_id, {})
            if job_done is not None:
                self.db.execute("UPDATE jobs SET state = 'done' WHERE job_id = ?", (job_done,))
            if job_process is not None:
                self.db.execute(
                    "UPDATE jobs SET proc = ? WHERE job_id = ?", (job_process[1], job_process[0])
                )
        return seq, frame

    # -- control requests carried out (agent/control.py, ONCE_OPS) ------------------------
    def request_reply(self, request_id: str) -> dict[str, Any] | None:
        """The answer given to control request ``request_id``, if it was carried out."""
        row = self.db.execute(
            "SELECT reply FROM control_requests WHERE id = ? AND pending IS NULL", (request_id,)
        ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def request_pending(self, request_id: str) -> dict[str, Any] | None:
        """What was recorded of control request ``request_id`` when it was started
        (``record_request(..., pending=...)``), if it was not recorded as done."""
        row = self.db.execute(
            "SELECT pending FROM control_requests WHERE id = ? AND pending IS NOT NULL",
            (request_id,),
        ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def record_request(
        self, request_id: str, reply: dict[str, Any], pending: dict[str, Any] | None = None
    ) -> None:
        """Record control request ``request_id`` as carried out, with its answer - in the
        caller's transaction, with what it did; or, with ``pending``, as started (what
        the agent needs to find out later whether it was carried out: a request done
        elsewhere, on the server). Only the last ``MAX_REQUEST_IDS`` are kept (and none
        older than ``KEEP_REQUEST_IDS_SECONDS``: ``prune_requests``): a client sends a
        request again for ``--agent-wait`` seconds at most."""
        with self.transaction():
            self.db.execute(
                "INSERT INTO control_requests (id, reply, created, pending) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET reply = excluded.reply, "
                "pending = excluded.pending",
                (
                    request_id,
                    json.dumps(reply),
                    time.time(),
                    None if pending is None else json.dumps(pending),
                ),
            )
            # By this table's own numbers: an upsert that updates sets no lastrowid.
            self.db.execute(
                "DELETE FROM control_requests WHERE n <= (SELECT MAX(n) FROM control_requests) - ?",
                (MAX_REQUEST_IDS,),
            )

    def prune_requests(self, now: float | None = None) -> int:
        """Forget the control requests recorded more than ``KEEP_REQUEST_IDS_SECONDS``
        ago; return how many."""
        cutoff = (time.time() if now is None else now) - KEEP_REQUEST_IDS_SECONDS
        with self.transaction():
            cur = self.db.execute("DELETE FROM control_requests WHERE created < ?", (cutoff,))
        return int(cur.rowcount)

    def record_job_process(self, job_id: str, identity: str | None) -> None:
        """A running job's process (``Platform.process_identity``), for
        ``interrupted_jobs``, when no message goes with it (a folded job)."""
        with self.transaction():
            self.db.execute("UPDATE jobs SET proc = ? WHERE job_id = ?", (identity, job_id))

    def frames_after(self, after: int) -> list[tuple[int, str]]:
        """Unacknowledged frames numbered above ``after``, in order."""
        return self.outbox.replay(after, limit=-1)

    def acked(self, seq: int) -> None:
        """The server acknowledged everything up to ``seq`` (InvalidInput if it was never
        sent)."""
        with self.transaction():
            self.outbox.ack(seq)

    def resume_from(self) -> int:
        """The first message the agent can still send: its oldest unacknowledged one,
        else the next it will number."""
        return self.outbox.resume_from()

    def pending_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    # -- inbox (server -> agent) --------------------------------------------------------
    def mark_processed(
        self, seq: int, *, start_job: str | None = None, message: Envelope | None = None
    ) -> bool:
        """Record server message ``seq`` as processed; with ``start_job``, also record the
        job as started - unless it was seen before, then return False (do not run it);
        with ``message``, keep a user message for `crc agent wait-message`, forgetting
        the oldest first if it would pass the bound (``make_room_for``)."""
        with self.transaction():
            self.inbox.done(seq)
            fresh = True
            if message is not None:
                envelope = json.dumps(message.to_dict())
                size = len(envelope.encode("utf-8"))
                self.make_room_for(size)
                self.db.execute(
                    "INSERT INTO messages (type, sender, envelope, size) VALUES (?, ?, ?, ?)",
                    (message.type, message.sender, envelope, size),
                )
            if start_job is not None:
                cur = self.db.execute(
                    "INSERT INTO jobs (job_id, state, created) VALUES (?, 'running', ?) "
                    "ON CONFLICT(job_id) DO NOTHING",
                    (start_job, time.time()),
                )
                fresh = cur.rowcount == 1
        return fresh

    def make_room_for(self, size: int) -> int:
        """Forget stored user messages so that one of ``size`` bytes more stays within
        the bound (``keep_messages_bytes``, ``keep_messages_count``): consumed ones
        first, then unconsumed ones, oldest first, so a peer that sends without end
        cannot fill this machine's disk, and what scripts have read goes before what
        they have not. Return how many; call it in the transaction that stores the
        message."""
        if not self.keep_messages_bytes:  # --keep-messages-mib 0: keeps them all
            return 0
        count, total = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages"
        ).fetchone()
        excess_bytes = int(total) + size - self.keep_messages_bytes
        excess_count = int(count) + 1 - self.keep_messages_count if self.keep_messages_count else 0
        if excess_bytes <= 0 and excess_count <= 0:
            return 0
        kept = self.db.execute("SELECT n, size FROM messages ORDER BY consumed DESC, n")
        gone = messages_to_forget(kept, excess_bytes, excess_count)
        kept.close()
        self.db.executemany("DELETE FROM messages WHERE n = ?", [(n,) for n in gone])
        self._forgotten += len(gone)
        self._warn_forgotten()
        return len(gone)

    def _warn_forgotten(self) -> None:
        """One warning a minute at most, however fast a peer sends: the log must not
        be the next thing it fills."""
        now = time.monotonic()
        if now - self._warned < DROP_WARNING_SECONDS:
            return
        log.warning(
            "forgot %d stored user message(s), oldest first, to keep at most %g MiB and "
            "%d messages (crc agent run --keep-messages-mib)",
            self._forgotten,
            self.keep_messages_bytes / (1 << 20),
            self.keep_messages_count,
        )
        self._forgotten = 0
        self._warned = now

    def dead_letter(
        self,
        seq: int,
        kind: str,
        message_id: str | None,
        reason: str,
        attempts: int,
        reports: list[Envelope],
        job_id: str | None = None,
    ) -> list[str]:
        """Give up server message ``seq``: processed with no effect, kept in
        ``dead_letters``, and ``reports`` queued for the server, in one transaction (so
        the server hears of every message given up). ``job_id``: the job it carried is
        recorded as ended (never started later). Returns the reports' frames."""
        with self.transaction():
            self.inbox.done(seq)
            self.db.execute(
                "INSERT OR REPLACE INTO dead_letters (seq, type, id, reason, attempts, created)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (seq, kind, message_id, reason, attempts, time.time()),
            )
            if job_id is not None:
                self.forget_job(job_id)
            return [self.outbox.add(env)[1] for env in reports]

    def dead_letters(self) -> list[dict[str, Any]]:
        """Messages given up, oldest first."""
        rows = self.db.execute(
            "SELECT seq, type, id, reason, attempts, created FROM dead_letters ORDER BY seq"
        ).fetchall()
        keys = ("seq", "type", "id", "reason", "attempts", "created")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def forget_job(self, job_id: str) -> None:
        """Remember ``job_id`` as finished without running it (cancelled before start)."""
        self.db.execute(
            "INSERT INTO jobs (job_id, state, created) VALUES (?, 'done', ?) "
            "ON CONFLICT(job_id) DO NOTHING",
            (job_id, time.time()),
        )

    def interrupted_jobs(self) -> list[tuple[str, str | None]]:
        """Jobs recorded as running by a previous agent process, with what it recorded
        of their process (``Platform.process_identity``): they were cut off with it."""
        return [
            (r[0], r[1])
            for r in self.db.execute("SELECT job_id, proc FROM jobs WHERE state = 'running'")
        ]

    def peek_message(
        self, type: str, sender: str | None, skip: Collection[int] = ()
    ) -> tuple[int, dict[str, Any]] | None:
        """The oldest unconsumed user message of ``type`` (from ``sender``) whose number
        is not in ``skip`` (those being handed out), as ``(number, envelope)``; it stays
        unconsumed until ``consume_message``."""
        rows = self.db.execute(
            "SELECT n, envelope FROM messages WHERE type = ? AND consumed = 0 "
            "AND (? IS NULL OR sender = ?) ORDER BY n LIMIT ?",
            (type, sender, sender, len(skip) + 1),
        )
        for n, envelope in rows:
            if n not in skip:
                return int(n), dict(json.loads(envelope))
        return None

    def consume_message(self, n: int) -> None:
        """Message ``n`` was handed out: never again."""
        self.db.execute("UPDATE messages SET consumed = 1 WHERE n = ?", (n,))

    def take_message(self, type: str, sender: str | None) -> dict[str, Any] | None:
        """``peek_message`` and ``consume_message`` at once: the oldest unconsumed user
        message of ``type`` (from ``sender``), consumed now."""
        found = self.peek_message(type, sender)
        if found is None:
            return None
        self.consume_message(found[0])
        return found[1]

    def prune_messages(self, keep_days: float, now: float | None = None) -> int:
        """Forget user messages that arrived more than ``keep_days`` ago, consumed or
        not (a peer cannot fill the disk with messages nobody waits for); return how
        many. A message's arrival is stamped by the first prune that sees it, so call
        this periodically (``crc agent run --keep-messages-days``)."""
        if keep_days <= 0:
            return 0
        now = time.time() if now is None else now
        if "arrived" not in {r[1] for r in self.db.execute("PRAGMA table_info(messages)")}:
            self.db.execute("ALTER TABLE messages ADD COLUMN arrived REAL")
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("UPDATE messages SET arrived = ? WHERE arrived IS NULL", (now,))
            cur = self.db.execute(
                "DELETE FROM messages WHERE arrived < ?", (now - keep_days * 86400,)
            )
        return int(cur.rowcount)

    def close(self) -> None:
        self.db.close()


class AgentOutbox(OutboxStore[Envelope]):
    """The agent's numbered messages to the server: table ``outbox`` (seq, frame) and
    flag ``out_last`` (the highest number given, kept when the outbox empties)."""

    def __init__(self, state: AgentState) -> None:
        self.state = state
        self.db = state.db

    def take_seq(self) -> int:
        seq = self.last_seq() + 1
        self.state.put("out_last", str(seq))
        return seq

    def last_seq(self) -> int:
        row = self.db.execute("SELECT MAX(seq) FROM outbox").fetchone()
        return max(int(row[0] or 0), int(self.state.get("out_last", "0") or 0))

    def skip_to(self, last: int) -> None:
        self.state.put("out_last", str(last))

    def put(self, seq: int, item: Envelope) -> str:
        frame = write_frame(Msg(seq=seq, msg=item.to_dict()))
        self.db.execute("INSERT INTO outbox (seq, frame) VALUES (?, ?)", (seq, frame))
        return frame

    def drop_through(self, seq: int) -> int:
        return self.db.execute("DELETE FROM outbox WHERE seq <= ?", (seq,)).rowcount

    def pending(self, after: int, limit: int) -> list[tuple[int, str]]:
        rows = self.db.execute(
            "SELECT seq, frame FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
        ).fetchall()
        return [(int(s), f) for s, f in rows]

    def oldest(self) -> int | None:
        row = self.db.execute("SELECT MIN(seq) FROM outbox").fetchone()
        return int(row[0]) if row[0] is not None else None

    def renumber(self, old: int, new: int) -> None:
        row = self.db.execute("SELECT frame FROM outbox WHERE seq = ?", (old,)).fetchone()
        if row is not None:
            self.db.execute(
                "UPDATE outbox SET seq = ?, frame = ? WHERE seq = ?",
                (new, renumber_frame(row[0], new), old),
            )


class AgentInbox(InboxStore):
    """The server's messages processed: flags ``in_processed`` and ``in_attempt``
    (``SEQ:COUNT``, attempts at the next message, counted before processing it)."""

    def __init__(self, state: AgentState) -> None:
        self.state = state

    def processed(self) -> int:
        return int(self.state.get("in_processed", "0") or 0)

    def set_processed(self, seq: int) -> None:
        self.state.put("in_processed", str(seq))

    def attempts(self, seq: int) -> int:
        at, _, count = (self.state.get("in_attempt") or "0:0").partition(":")
        return int(count or 0) if at == str(seq) else 0

    def add_attempt(self, seq: int) -> int:
        count = self.attempts(seq) + 1
        self.state.put("in_attempt", f"{seq}:{count}")
        return count
