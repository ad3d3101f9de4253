"""The Python SDK: a thin, typed client of the HTTP API (docs/sdk.md).

    from cloudremotecontrol import Client
    with Client.from_profile() as crc:               # the `crc login` profile
        crc.create_group("lab", ["a", "b"])
        crc.wait_ready("lab", timeout=600)
        result = crc.run_wait("lab", "all", argv=["uname", "-a"], on_event=print)

``AsyncClient`` (master/aclient.py) has the same methods for asyncio. Both carry out
the calls described in ``calls.py``; the rules of their waits are in ``waits.py``.
Errors are the ``cloudremotecontrol.errors`` hierarchy (same codes as the HTTP API);
events and results are the typed records of ``types.py``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import socket
import stat
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, overload

try:
    import fcntl
except ImportError:  # Windows: no flock (pull_partial)
    fcntl = None  # type: ignore[assignment]

import httpx

from ..errors import CrcError, InvalidInput, NotFound, TimedOut, TooLarge, Unavailable
from ..fslinks import file_kind, through_links
from ..protocol.fields import check_push_path
from ..protocol.limits import MAX_FILE_BYTES, file_too_large
from ..protocol.messages import decode_file_mode
from ..tlspin import check_base_url, client_context, is_untrusted, untrusted_error
from . import calls
from .calls import (
    KEEPALIVE,
    RESUME_SECONDS,
    Call,
    Resume,
    StreamCall,
    answer_of,
    parse_sse_line,
    raise_for,
)
from .follow import follow_events
from .profile import Profile, load_profile
from .types import (
    Event,
    JobResult,
    Message,
    RunResult,
    exit_code_of,
    is_final,
    job_accepted,
    run_result,
)
from .waits import FLOOR_TYPES, MessageWait, ReadyWait, check_timeout

if TYPE_CHECKING:
    from .streams import ForwardThread, ShellSession

__all__ = [
    "Client",
    "check_download_target",
    "clean_token",
    "download_mode",
    "older_server",
    "push_fields",
    "worst_exit_code",
    "write_error",
]

#: Called with each event; what it returns is ignored.
EventHandler = Callable[[Event], object]
#: Names where a list goes: a list, a tuple, a set... (a string is InvalidInput).
Names = Collection[str]
#: A local file's path: a string or a ``pathlib.Path``.
LocalPath = str | os.PathLike[str]


def split_urls(url: object) -> list[str]:
    """The server's URLs (replicas, comma-separated), each a base URL as `crc login`
    takes it: a page of the server (``/dashboard/``) is InvalidInput, not a base
    under which every call would be "no endpoint"."""
    if not isinstance(url, str):
        raise InvalidInput(f"the server URL must be a string, not {type(url).__name__}")
    urls = [u.strip().rstrip("/") for u in url.split(",") if u.strip()]
    if not urls:
        raise InvalidInput("no server URL given")
    for u in urls:
        check_base_url(u)
    return urls


def check_resume_for(value: object) -> float:
    """``resume_for``: seconds, a finite number at least 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise InvalidInput(
            f"invalid resume_for {value!r}: seconds, a finite number at least 0",
            field="resume_for",
        )
    return float(value)


def http_timeout(timeout: float, wait: float = 0.0, stream: bool = False) -> httpx.Timeout:
    """The ``httpx.Timeout`` of one request of a client whose ``timeout`` it is: that,
    for connecting, each read and each write; the answer of a request the server holds
    back ``wait`` seconds (a key/value wait) gets those and ``calls.WAIT_MARGIN`` more;
    a followed event stream (``stream``) may say nothing for ``calls.STREAM_SILENCE``
    seconds (or ``timeout`` if longer: the server's keepalives come far more often)
    before it counts as broken (opened again, then ``Unavailable``)."""
    if stream:
        return httpx.Timeout(timeout, read=max(timeout, calls.STREAM_SILENCE))
    if wait > 0:
        return httpx.Timeout(timeout, read=timeout + wait + calls.WAIT_MARGIN)
    return httpx.Timeout(timeout)


def clean_token(token: object) -> str:
    """The token as it is sent (``Authorization: Bearer``): without the whitespace around
    it (a pasted token's newline or space), else as given. InvalidInput, never showing
    the token, when it is empty or holds anything but visible ASCII characters (a space
    inside, a curly quote from a word processor): no token has such characters, and
    an HTTP header cannot carry them."""
    if not isinstance(token, str):
        raise InvalidInput("the token must be a string", field="token")
    text = token.strip()
    if not text:
        raise InvalidInput("the token is empty: give the master token (crcm_...)", field="token")
    bad = next((c for c in text if not "!" <= c <= "~"), None)
    if bad is not None:
        raise InvalidInput(
            f"the token holds a character no token has (U+{ord(bad):04X}): copy it again "
            "as `crc server add-user` or `crc server add-token` printed it",
            field="token",
        )
    return text


def check_download_target(local: str | os.PathLike[str]) -> None:
    """InvalidInput unless a file can be written at ``local``: it is no directory, no
    device, FIFO or socket (nor a link to one, such as /dev/stdout: the file written is
    moved into place, which would replace the device itself), and its directory exists
    and is writable (for a link, the directory of the file it leads to: ``written_path``).
    ``crc pull`` checks it before the job starts, ``download_pulled`` before it fetches
    anything."""
    local = os.fspath(local)  # a str, or a path (the SDK's callers may give either)
    if not local:
        raise InvalidInput("LOCAL is empty: give the path of the file to write")
    path = written_path(local)
    directory = os.path.dirname(path)
    if os.path.isdir(path):
        raise InvalidInput(f"cannot write {local}: it is a directory")
    if local.endswith(("/", os.sep)):  # meant as a directory, and there is none
        raise InvalidInput(f"cannot write {local}: there is no directory {path}")
    try:
        mode: int | None = os.stat(path).st_mode
    except OSError:
        mode = None  # no such file yet (or a dangling link): made by the move
    if mode is not None and not stat.S_ISREG(mode):
        raise InvalidInput(
            f"cannot write {local}: it is {file_kind(mode)}, not a regular file (crc pull "
            "writes a file: give its path)"
        )
    if not os.path.isdir(directory):
        raise InvalidInput(f"cannot write {local}: there is no directory {directory}")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise InvalidInput(f"cannot write {local}: the directory {directory} is not writable")


def local_path(local: LocalPath) -> str:
    """A local file's path as a string: a ``pathlib.Path`` (any ``os.PathLike``) is
    taken as its string; anything else as it is (a string, or what is refused as before)."""
    return os.fspath(local) if isinstance(local, os.PathLike) else local


#: The least a wait's first look (the group, the event cursor) is given, however little
#: of the wait is left: a wait of 0 s looks once (master/waits.py, ``check_timeout``).
LOOK_SECONDS = 5.0


def look_timeout(timeout: float, deadline: float) -> httpx.Timeout:
    """The ``httpx.Timeout`` of a wait's first calls: what is left of the wait, at least
    ``LOOK_SECONDS``, at most the client's ``timeout``."""
    return httpx.Timeout(min(timeout, max(LOOK_SECONDS, deadline - time.monotonic())))


def late_error(exc: Unavailable, deadline: float, timeout: float) -> Unavailable:
    """What a wait of ``timeout`` seconds raises when one of its calls failed with
    ``exc``: its timeout (code ``timeout``) if that came at its deadline, else ``exc``."""
    if time.monotonic() < deadline or exc.code == "not_crc_server":
        return exc
    return Unavailable(f"timed out after {timeout:g} s: {exc}", code="timeout")


def written_path(local: str) -> str:
    """The file a download to ``local`` writes (absolute): ``local`` itself, or the file
    it leads to when it is a symbolic link of this user's (``fslinks.through_links``, as
    ``crc push`` writes on a machine: the link is kept; a dangling link, a loop or
    another user's link is refused). The download's temporary file goes beside that
    file, so that moving it into place never crosses file systems."""
    try:
        return os.path.abspath(through_links(local, "pull"))
    except OSError as exc:  # a directory on the way that cannot be read
        raise write_error(local, exc) from None


def download_mode(existing: int | None, umask: int, remote: int | None = None) -> int:
    """The permission bits of a file a pull writes, as cp and scp give them: an existing
    file's (``existing``, its ``st_mode``) are kept; a new file gets those of the file
    on the machine (``remote``, the mode its agent reported) less ``umask``, or 0666
    less ``umask`` when no mode was reported (an older agent or server, or a Windows
    machine). The content comes from the machine: never a setuid, setgid or sticky bit,
    not even one kept from a file it replaces or reported by the machine."""
    if existing is not None:
        return stat.S_IMODE(existing) & 0o777
    bits = 0o666 if remote is None else remote & 0o777
    return bits & ~umask & 0o777


def push_fields(local: str, remote: str) -> tuple[str, str | None, str | None]:
    """What a push of ``local`` to ``remote`` sends besides ``--mode``: ``remote``
    itself, or ``remote`` + LOCAL's name when it ends in a separator (``/x/``, and
    ``C:\\dir\\`` for a Windows machine), as scp and cp copy into a directory; the mode
    of ``local`` for a new file (octal, permission bits only; none from Windows, where
    modes say little); and LOCAL's name, for a ``remote`` that is a directory on a
    machine (none if it is no name a push could write, or ``remote`` got it already)."""
    from ..protocol.messages import FilePut

    name: str | None = os.path.basename(os.path.abspath(local))
    try:
        FilePut.from_body({"job_id": "j", "sha256": "0" * 64, "size": 0, "path": "/", "name": name})
    except InvalidInput:
        name = None  # only a path naming a file can be given
    if name is not None and (
        remote.endswith("/") or (remote.endswith("\\") and not remote.startswith("/"))
    ):
        # The path now names the file: a directory there is refused, as cp refuses it.
        remote, name = remote + name, None
    new_mode = None
    if hasattr(os, "fchmod"):  # not Windows
        with contextlib.suppress(OSError):
            new_mode = format(stat.S_IMODE(os.stat(local).st_mode) & 0o777, "04o")
    return remote, new_mode, name


def older_server(exc: InvalidInput) -> bool:
    """The server refused a field of a push it does not know (a server older than the
    fields ``push_fields`` adds): the push is then sent without them."""
    field = exc.details.get("field")
    words = exc.message
    named = field in ("new_mode", "name") or words.startswith(("invalid new_mode", "invalid name"))
    return named and ("not a field" in words or "xtra" in words)  # its words, or pydantic's


_UMASK_LOCK = threading.Lock()


def process_umask() -> int:
    """This process's umask, read without changing it where the system says it
    (``/proc/self/status``); elsewhere set and put back at once (077 meanwhile: a file
    another thread makes in that instant is private, never more open)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def set_download_mode(fd: int, tmp: str, target: str, remote: object = None) -> None:
    """Give a pull's temporary file (open as ``fd``, named ``tmp``), before it is moved
    over ``target``, the mode ``download_mode`` says: it was made private (0600) so
    that no one could read it while it was written. ``remote``: the mode the machine
    reported (the server's answer: checked here, ignored when it is no mode; and on
    Windows, where a mode is only the read-only flag)."""
    try:
        reported = decode_file_mode(remote) if hasattr(os, "fchmod") else None
    except InvalidInput:
        reported = None
    try:
        existing: int | None = os.stat(target).st_mode
    except OSError:
        existing = None  # a new file (or a dangling link's: made by the move)
    if existing is not None and not stat.S_ISREG(existing):
        existing = None
    mode = download_mode(existing, process_umask(), reported)
    if hasattr(os, "fchmod"):
        os.fchmod(fd, mode)
    else:  # Windows: only the read-only flag, by name
        os.chmod(tmp, mode)


#: A pull's partial file, beside the file it becomes (``pull_partial``).
PARTIAL_PREFIX = ".crc-pull-"
#: A partial file no pull holds, untouched for this long, is a dead pull's.
STALE_PARTIAL_SECONDS = 600.0


def pull_partial(directory: str) -> tuple[int, str]:
    """A new partial file for a pull into ``directory``: its descriptor and path, made
    private (``tempfile.mkstemp``) and locked (``flock``) while the pull writes it. The
    partials of dead pulls (a pull killed, ``kill -9``) are removed first: those of
    this user that no pull holds locked and that were not written to for
    ``STALE_PARTIAL_SECONDS`` (a pull still running, even stalled, holds its lock; the
    time covers a partial just made or just written, whose lock is not yet taken or is
    already dropped). Not on Windows (no ``flock``): there a dead pull's partial stays."""
    if fcntl is not None:
        remove_stale_partials(directory)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=PARTIAL_PREFIX)
    if fcntl is not None:
        with contextlib.suppress(OSError):  # a file system without locks: never removed
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd, tmp


def remove_stale_partials(directory: str, now: float | None = None) -> list[str]:
    """Remove the partial files of dead pulls in ``directory`` (``pull_partial``); what
    was removed. Anything in doubt (another user's, not a plain file, a lock that cannot
    be tried, an error) is left alone."""
    if fcntl is None:
        return []
    removed: list[str] = []
    try:
        names = [n for n in os.listdir(directory) if n.startswith(PARTIAL_PREFIX)]
    except OSError:
        return removed
    for name in names:
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue  # gone meanwhile, a link, not readable
        try:
            st = os.fstat(fd)
            stale = (now if now is not None else time.time()) - st.st_mtime
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                continue
            if stale < STALE_PARTIAL_SECONDS:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a pull holds it: it is running
            now_there = os.lstat(path)
            if (now_there.st_dev, now_there.st_ino) == (st.st_dev, st.st_ino):
                os.unlink(path)
                removed.append(path)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


def write_error(local: str, exc: OSError) -> CrcError:
    """The error for a file that could not be written at ``local``: the user's to fix
    (a path, a permission: InvalidInput, exit 2), or this computer's (a full disk, an I/O
    error: Unavailable, exit 6)."""
    what = f"cannot write {local}: {exc.strerror or exc}"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOENT, errno.ENOTDIR):
        return InvalidInput(what)
    return Unavailable(what)


class Client:
    """A connection to the server as one user (master token).

    ``url`` may list several replicas of one server, comma-separated: a request that
    cannot connect is sent to the next one, and event streams resume there from their
    last cursor. An event stream that breaks (a server restarting, a network cut) is
    opened again for up to ``resume_for`` seconds (default 60) before ``Unavailable``,
    and resumes from its cursor. ``fingerprint`` pins the server's certificate
    (``sha256:<hex>``, as ``crc server init`` prints it); without it the system's CAs
    are trusted."""

    def __init__(
        self,
        url: str,
        token: str,
        fingerprint: str | None = None,
        cert_pem: str | None = None,
        timeout: float = 30.0,
        resume_for: float = RESUME_SECONDS,
    ) -> None:
        self.urls = split_urls(url)
        self.fingerprint = fingerprint
        self._token, self.cert_pem = clean_token(token), cert_pem
        self._timeout = calls.check_client_timeout(timeout)
        self.resume_for = check_resume_for(resume_for)
        #: Told in a sentence when an event stream breaks and when it is read again
        #: (the CLI says so on stderr): it may resume quietly for ``resume_for`` s.
        self.on_stream_break: Callable[[str], None] | None = None
        self._index = 0
        # halt(): each stream being read has an Event of its own, set by halt(); a
        # stream begun after it is read as usual (``_halts`` counts the halts).
        self._halt_lock = threading.Lock()
        self._halts = 0
        self._halting: set[threading.Event] = set()
        self._closed = False
        # The clients of the waits' followers (``_sibling``): halted by ``close()``.
        self._siblings: weakref.WeakSet[Client] = weakref.WeakSet()
        # The sockets of the streams being read, by their halt Event (``_cut_streams``).
        self._stream_socks: dict[threading.Event, socket.socket] = {}
        self._cut = False  # _cut_streams() called: a stream opened later is cut at once
        self._http = self._connect_any()

    @property
    def url(self) -> str:
        """The server URL in use (one of ``urls``)."""
        return self.urls[self._index]

    def _open(self, url: str) -> httpx.Client:
        ctx, self.cert_pem = client_context(
            url, self.fingerprint, self.cert_pem, timeout=self._timeout
        )
        return httpx.Client(
            base_url=url + "/v1",
            verify=ctx if ctx is not None else False,
            headers={"Authorization": f"Bearer {self._token}"},
            timeout=http_timeout(self._timeout),
            trust_env=False,
        )

    def _connect_any(self) -> httpx.Client:
        unreached = calls.Unreached()
        for attempt in range(len(self.urls)):
            try:
                return self._open(self.url)
            except Unavailable as exc:
                unreached.add(self.url, exc)
                if attempt == len(self.urls) - 1:
                    raise unreached.error(exc) from None
                self._index = (self._index + 1) % len(self.urls)
        raise Unavailable("no server URL given")

    def _failover(self, unreached: calls.Unreached | None = None) -> bool:
        """Switch to the next replica whose client opens, never back to the one it
        leaves nor to one in ``unreached`` (those that failed add their reason to it);
        False, staying where it is, when no other is left."""
        self._check_open()  # closed meanwhile (another thread): no new connection
        tried = calls.Unreached() if unreached is None else unreached
        for i in calls.next_urls(self.urls, self._index, tried.why):
            try:
                http = self._open(self.urls[i])
            except Unavailable as exc:
                tried.add(self.urls[i], exc)
                continue
            self._http.close()
            self._http, self._index = http, i
            return True
        return False

    @classmethod
    def from_profile(cls, profile: Profile | None = None) -> Client:
        """The client of the `crc login` profile (``CRC_URL``, ``CRC_TOKEN`` and
        ``CRC_FINGERPRINT`` override it; one set but empty is ``InvalidInput``)."""
        p = profile or load_profile()
        return cls(p.url, p.token, p.fingerprint, p.cert_pem)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; any later use of this client raises InvalidInput
        (code ``client_closed``), and a wait or stream in progress (another thread's)
        ends with it. Closing again does nothing."""
        self._closed = True
        with self._halt_lock:
            siblings = list(self._siblings)
            self._siblings.clear()
        for sibling in siblings:  # a wait's follower: it ends now, not at a keepalive
            sibling._cut_streams()
        self._http.close()

    def _cut_streams(self) -> None:
        """``halt()``, and the connections of the streams being read shut down, so that
        they end now, not at their next keepalive (a wait's follower that ends)."""
        with self._halt_lock:
            self._halts += 1
            for halted in self._halting:
                halted.set()
            self._cut = True
            open_socks = list(self._stream_socks.values())
        for sock in open_socks:
            with contextlib.suppress(OSError):
                # The socket's own shutdown, under TLS too: the reader's recv ends.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def _check_open(self) -> None:
        if self._closed:
            raise calls.client_closed()

    def halt(self) -> None:
        """End this client's event streams being read (``events``, ``job_events``, and
        the follow of ``follow_job``, ``run`` and ``run_wait``) at their next event,
        keepalive or reconnection attempt; safe to call from another thread. It ends
        those in progress when it is called, and only those: the client itself is not
        halted, and a stream or call begun later works as usual."""
        with self._halt_lock:
            self._halts += 1
            for halted in self._halting:
                halted.set()

    @contextlib.contextmanager
    def _halt_scope(self, since: int) -> Iterator[threading.Event]:
        """The Event that ``halt()`` sets while a stream is read: already set if a halt
        came after ``since`` (``_halts`` when the call reading it began)."""
        halted = threading.Event()
        with self._halt_lock:
            if self._halts != since:
                halted.set()
            self._halting.add(halted)
        try:
            yield halted
        finally:
            with self._halt_lock:
                self._halting.discard(halted)
                self._stream_socks.pop(halted, None)

    def _sibling(self) -> Client:
        """A new client to the same server as the same user (a client is not shared
        across threads: a wait follows its events on a thread of its own)."""
        self._check_open()
        sibling = Client(
            ",".join(self.urls[self._index :] + self.urls[: self._index]),
            self._token,
            self.fingerprint,
            self.cert_pem,
            self._timeout,
            self.resume_for,
        )
        sibling.on_stream_break = self.on_stream_break
        with self._halt_lock:
            closed = self._closed
            if not closed:
                self._siblings.add(sibling)
        if closed:  # closed while it was made: its follow ends at once
            sibling.close()
            raise calls.client_closed()
        return sibling

    # -- plumbing -----------------------------------------------------------------------
    def _unreachable(self, exc: httpx.HTTPError) -> Exception:
        if is_untrusted(exc):
            return untrusted_error(self.url, exc)
        return Unavailable(f"cannot reach {self.url}: {exc}")

    def _request(
        self, method: str, path: str, resend: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """One request, sent to the next replica when this one cannot be reached, or
        when its answer was cut and the request is a read or ``resend`` (one that does
        the same however often it is sent: a content-addressed upload, whose content is
        then an iterable read again each time)."""
        self._check_open()
        unreached = calls.Unreached()
        while True:
            try:
                return self._http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Nothing reached the server: safe to send to another replica.
                if is_untrusted(exc):
                    raise self._unreachable(exc) from None
                cut: httpx.HTTPError = exc
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                if not resend and method.upper() not in calls.RESENDABLE:
                    raise self._unreachable(exc) from None  # it may have been done
                cut = exc  # cut by its replica's end, safe to send again: to the next
            except httpx.ReadTimeout:
                raise calls.unanswered(self.url, method) from None
            except httpx.HTTPError as exc:
                raise self._unreachable(exc) from None
            unreached.add(self.url, cut)
            if not self._failover(unreached):
                raise unreached.error(self._unreachable(cut)) from None

    def _call(self, method: str, path: str, resend: bool = False, **kwargs: Any) -> Any:
        resp = self._request(method, path, resend, **kwargs)
        if resp.status_code >= 400:
            raise_for(
                self.url,
                resp.status_code,
                resp.headers.get("content-type"),
                resp.content,
                resp.headers.get("retry-after"),
            )
        return answer_of(self.url, resp.status_code, resp.headers.get("content-type"), resp.content)

    def _do(self, call: Call, deadline: float | None = None) -> Any:
        """``call`` carried out; within ``deadline`` (``time.monotonic``), if given, as
        a wait's first calls are: each phase of the request gets the time left (at
        least ``LOOK_SECONDS``: a wait of 0 s still looks once)."""
        timeout = http_timeout(self._timeout, call.wait)
        if deadline is not None:
            timeout = look_timeout(self._timeout, deadline)
        answer = self._call(
            call.method, call.path, params=call.params, json=call.json, timeout=timeout
        )
        return call.result(answer)

    def _stream(self, call: StreamCall, since: int | None = None) -> Iterator[Any]:
        """The stream's items; ``since``: ``_halts`` when the call began (a halt after
        it ends this stream, though it was called before the stream was opened)."""
        return self._halted_stream(call, self._halts if since is None else since)

    def _halted_stream(self, call: StreamCall, since: int) -> Iterator[Any]:
        with self._halt_scope(since) as halted:
            if not halted.is_set():  # halted before it was read: not opened at all
                yield from self._read_stream(call, halted)

    def _read_stream(self, call: StreamCall, halted: threading.Event) -> Iterator[Any]:
        resume = Resume(len(self.urls), self.resume_for, notify=self.on_stream_break)
        while True:
            try:
                for item in self._stream_once(call, resume, halted):
                    if halted.is_set():
                        return
                    resume.progressed()
                    yield item
                return
            except (httpx.TransportError, Unavailable) as exc:
                if isinstance(exc, Unavailable) and exc.code == "not_crc_server":
                    raise  # the wrong URL (a web server's 404 page): no waiting changes it
                if self._closed:  # closed while it was read: no server restart to wait out
                    raise calls.client_closed() from None
                # A server restarting, a network cut, a replica gone: resume from the last
                # event seen (its cursor), on the next replica if there is one (calls.Resume).
                if isinstance(exc, httpx.TransportError) and is_untrusted(exc):
                    raise self._unreachable(exc) from None
                if halted.wait(resume.next_wait(self.url, exc)):
                    return
                try:
                    self._failover()
                except Unavailable:
                    pass  # the next attempt fails too, and counts
            except httpx.HTTPError as exc:
                raise Unavailable(f"event stream from {self.url} broke: {exc}") from None

    def _stream_once(
        self,
        call: StreamCall,
        resume: Resume | None = None,
        halted: threading.Event | None = None,
    ) -> Iterator[Any]:
        self._check_open()
        timeout = http_timeout(self._timeout, stream=bool(call.params.get("follow")))
        with self._http.stream("GET", call.path, params=call.params, timeout=timeout) as resp:
            if resp.status_code >= 400:
                raise_for(self.url, resp.status_code, resp.headers.get("content-type"), resp.read())
            if halted is not None:
                self._watch_socket(resp, halted)
            if resume is not None:  # open again after a break: said now
                resume.opened(self.url)
            for line in resp.iter_lines():
                item = parse_sse_line(line)
                if item is KEEPALIVE:
                    if resume is not None:  # the stream is alive: a later break starts afresh
                        resume.progressed()
                    if call.keepalive:
                        yield None
                    elif halted is not None and halted.is_set():  # quiet stream: end it now
                        return
                elif item is not None:
                    call.params["since"] = item["cursor"]
                    yield Event.from_dict(item)

    def _watch_socket(self, resp: httpx.Response, halted: threading.Event) -> None:
        """Let ``_cut_streams`` shut the connection of the stream ``halted`` is of."""
        stream = resp.extensions.get("network_stream")
        sock = None if stream is None else stream.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            with self._halt_lock:
                if halted in self._halting:
                    self._stream_socks[halted] = sock
                cut = self._cut
            if cut:
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def _gone(self, group: str) -> NotFound | None:
        """``NotFound`` if ``group`` was deleted (while a wait waited on it) or has
        expired, else None."""
        try:
            view = self.group(group)
        except NotFound:
            return calls.group_gone(group, None)
        except CrcError:
            return None
        return calls.group_gone(group, view)

    def _stream_ended(self, group: str) -> CrcError:
        """Why a wait's event stream of ``group`` ended: the group was deleted meanwhile
        (``NotFound``, as a key/value wait says it), or it cannot tell (``Unavailable``)."""
        gone = self._gone(group)
        return gone or Unavailable(f"the event stream of {group} ended (group deleted?)")

    # -- groups -------------------------------------------------------------------------
    def whoami(self) -> dict[str, Any]:
        return dict(self._do(calls.whoami()))

    def create_group(
        self,
        name: str,
        machines: Collection[str | dict[str, Any]],
        key_ttl: float | None = None,
        ttl: float | None = None,
        settings: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Create a group; the answer lists each machine's single-use ``key`` (shown
        only now). ``machines``: names, or ``{"name", "labels"}`` mappings."""
        return dict(self._do(calls.create_group(name, machines, key_ttl, ttl, settings)))

    def list_groups(self) -> list[dict[str, Any]]:
        return list(self._do(calls.list_groups()))

    def group(self, name: str) -> dict[str, Any]:
        """The group and its machines (state, addresses, facts, latest progress)."""
        return dict(self._do(calls.group(name)))

    def machine_key(self, group: str, machine: str, key_ttl: float | None = None) -> dict[str, Any]:
        """A fresh single-use key for a machine not enrolled yet (its old key stops
        working); Conflict once it has enrolled."""
        return dict(self._do(calls.machine_key(group, machine, key_ttl)))

    def delete_group(self, name: str) -> dict[str, Any]:
        """Delete the group: every key and credential is revoked; its agents stop."""
        return dict(self._do(calls.delete_group(name)))

    def arm_teardown(self, group: str, provider: str, api_key: str) -> dict[str, Any]:
        """Hand the server ``provider``'s API key so that it destroys the group's
        machines there when the group's TTL passes (stored encrypted, never shown)."""
        return dict(self._do(calls.arm_teardown(group, provider, api_key)))

    def disarm_teardown(self, group: str) -> dict[str, Any]:
        """Take the provider key back: the TTL then only revokes the group."""
        return dict(self._do(calls.disarm_teardown(group)))

    def wait_ready(
        self,
        group: str,
        timeout: float = 900.0,
        machines: Names | None = None,
        on_event: EventHandler | None = None,
    ) -> dict[str, Any]:
        """Block until the group's machines (or ``machines``) are ready; return the
        group's view. ``on_event`` sees their state and progress events as they come.
        Raises Unavailable (code ``timeout``) after ``timeout`` seconds, InvalidInput if
        a machine is revoked or ``timeout`` is no number from 0 to 604800 (a week; nan,
        inf, negative), NotFound if one of ``machines`` is not in the group or the group
        is deleted meanwhile."""
        # Checked before the try: its InvalidInput would have the group looked up.
        timeout = check_timeout(timeout)
        try:
            return self._wait_ready(group, timeout, machines, on_event)
        except InvalidInput:  # a machine revoked: by the deletion of its group?
            gone = self._gone(group)
            if gone is None:
                raise
            raise gone from None

    def _wait_ready(
        self,
        group: str,
        timeout: float,
        machines: Names | None,
        on_event: EventHandler | None,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        try:  # within the deadline, a server that does not answer too
            cursor = int(self._do(calls.event_cursor(group), deadline))
            wait = ReadyWait(self._do(calls.group(group), deadline), machines)
        except Unavailable as exc:
            raise late_error(exc, deadline, timeout) from None
        if not wait.done:
            # On a thread of its own, so that the deadline is kept however quiet the
            # stream is (follow.py).
            for ev in follow_events(self._sibling, group, cursor):
                if ev is not None and wait.feed(ev) and on_event is not None:
                    on_event(ev)
                if wait.done:
                    break
                self._check_open()  # closed meanwhile (another thread): ends the wait
                if time.monotonic() > deadline:
                    raise wait.timeout_error(timeout)
            else:
                self._check_open()  # its follower ended by close()
                raise self._stream_ended(group)
        return self.group(group)

    # -- scenario runs (``crc up`` reports its step graph; the dashboard shows it) ------
    def start_run(self, group: str, run: dict[str, Any]) -> dict[str, Any]:
        """Report a scenario run's step graph (``crc up`` does): ``{"run_id",
        "scenario", "steps": [{"name", "kind", "to", "needs", "retries"}]}``."""
        return dict(self._do(calls.start_run(group, run)))

    def report_run(self, group: str, report: dict[str, Any]) -> dict[str, Any]:
        """One change of the run: ``{"type": "phase"|"step"|"end", "run_id", ...}``."""
        return dict(self._do(calls.report_run(group, report)))

    def run_state(self, group: str) -> dict[str, Any]:
        """The group's scenario run as reported: steps with states, attempts, timings."""
        return dict(self._do(calls.run_state(group)))

    def health(self) -> dict[str, Any]:
        """``{"ok", "version"}``, and ``"dashboard"`` (its path) when the server has one."""
        return dict(self._do(calls.health()))

    # -- jobs ---------------------------------------------------------------------------
    def start_job(
        self,
        group: str,
        to: str,
        *,
        argv: list[str] | None = None,
        command: str | None = None,
        shell: str | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        max_concurrency: int | str | None = None,
        max_errors: int | str | None = None,
        batch_wait: float | None = None,
        canary: int | None = None,
        deliver_within: float | None = None,
    ) -> dict[str, Any]:
        """Start a command on the targets (``to``: a machine, ``a,b``, ``KEY=VALUE`` or
        ``all``); returns ``{"job_id", "targets"}`` once it is durably queued.

        Rate control, enforced by the server whether or not this client stays:
        ``max_concurrency`` (N or ``"P%"``) running at once; ``max_errors`` (N or
        ``"P%"``) failures after which no other target starts (they end ``skipped``);
        ``batch_wait`` seconds a finished target keeps its slot; ``canary`` N targets
        first, the rest only if all succeed; ``deliver_within`` seconds after which
        targets not reached end ``expired``."""
        rollout = {
            "max_concurrency": max_concurrency,
            "max_errors": max_errors,
            "batch_wait": batch_wait,
            "canary": canary,
            "deliver_within": deliver_within,
        }
        call = calls.start_job(group, to, argv, command, shell, env, cwd, timeout, rollout)
        return dict(self._do(call))

    def list_jobs(self, group: str, limit: int = 50) -> list[dict[str, Any]]:
        """The group's latest jobs, oldest first, with their targets' statuses."""
        return list(self._do(calls.list_jobs(group, limit)))

    def job(self, job_id: str) -> dict[str, Any]:
        """A job: its spec and every target's status, exit code and reason."""
        return dict(self._do(calls.job(job_id)))

    def job_results(self, job_id: str) -> dict[str, JobResult]:
        """The targets of a job that have finished, by machine."""
        out = {}
        for t in self.job(job_id)["targets"]:
            r = JobResult.from_dict({**t, "job_id": job_id})
            if is_final(r.status):
                out[r.machine] = r
        return out

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Cancel every target that has not finished (its process tree is killed):
        ``{"job_id", "cancelling": [machines unfinished when the server took it]}``."""
        return dict(self._do(calls.cancel_job(job_id)))

    def job_events(self, job_id: str, since: int = 0, follow: bool = True) -> Iterator[Event]:
        return self._stream(calls.job_events(job_id, since, follow))

    def follow_job(self, job_id: str, targets: list[str], since: int = 0) -> Iterator[Event]:
        """Events of a job (after cursor ``since``) until every target of ``targets``
        reached a final status."""
        return self._follow_job(job_id, targets, since, self._halts)

    def _follow_job(
        self, job_id: str, targets: list[str], since: int, halts: int
    ) -> Iterator[Event]:
        left = set(targets)
        if not left:
            return
        for event in self._stream(calls.job_events(job_id, since, True), halts):
            yield event
            if event.result is not None:
                left.discard(event.result.machine)
                if not left:
                    return

    def run(self, group: str, to: str, **job: Any) -> Iterator[Event]:
        """Start a job and yield its events until every target finished; the first is
        ``job.accepted`` (``types.job_accepted``: the job's id, ``data["targets"]``)."""
        halts = self._halts  # a halt() from now on ends the follow
        started = self.start_job(group, to, **job)
        yield job_accepted(started)
        yield from self._follow_job(started["job_id"], started["targets"], 0, halts)

    def run_wait(
        self, group: str, to: str, *, on_event: EventHandler | None = None, **job: Any
    ) -> RunResult:
        """Run a job to the end; ``on_event`` sees its output and status events live.
        Takes ``start_job``'s arguments."""
        halts = self._halts  # a halt() while the job is started ends the follow too
        started = self.start_job(group, to, **job)
        results: dict[str, JobResult] = {}
        try:
            for ev in self._follow_job(started["job_id"], started["targets"], 0, halts):
                if on_event is not None:
                    on_event(ev)
                if ev.result is not None:
                    results[ev.result.machine] = ev.result
        except KeyboardInterrupt:  # Ctrl-C: the job too, as `crc run` does
            with contextlib.suppress(CrcError):
                self.cancel_job(started["job_id"])
            raise
        return run_result(started["job_id"], started["targets"], results)

    def hosts_sync(self, group: str, to: str = "all", ip: str = "auto") -> dict[str, Any]:
        """Start the job that writes the group's machines into hosts files."""
        return dict(self._do(calls.hosts_sync(group, to, ip)))

    # -- messages and events ------------------------------------------------------------
    def send_message(
        self, group: str, to: str, type: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Queue data message ``type`` (``user.NAME``) for machines."""
        return dict(self._do(calls.send_message(group, to, type, body)))

    @overload
    def events(
        self,
        group: str,
        since: int | None = None,
        follow: bool = False,
        keepalive: Literal[False] = False,
        types: Names = (),
    ) -> Iterator[Event]: ...
    @overload
    def events(
        self,
        group: str,
        since: int | None,
        follow: bool,
        keepalive: Literal[True],
        types: Names = (),
    ) -> Iterator[Event | None]: ...
    @overload
    def events(
        self,
        group: str,
        since: int | None = None,
        follow: bool = False,
        *,
        keepalive: Literal[True],
        types: Names = (),
    ) -> Iterator[Event | None]: ...
    @overload
    def events(
        self,
        group: str,
        since: int | None = None,
        follow: bool = False,
        keepalive: bool = False,
        types: Names = (),
    ) -> Iterator[Event | None]: ...
    def events(
        self,
        group: str,
        since: int | None = None,
        follow: bool = False,
        keepalive: bool = False,
        types: Names = (),
    ) -> Iterator[Event | None]:
        """Events (``Event``) after cursor ``since``; with ``follow``, new ones as they
        happen; with ``keepalive`` also ``None`` every few seconds of silence, so a
        follower can check its own deadline; ``types`` keeps only those event types."""
        return self._stream(calls.events(group, since, follow, keepalive, types))

    def event_cursor(self, group: str) -> int:
        """The cursor of the group's latest event (follow from there)."""
        return int(self._do(calls.event_cursor(group)))

    def wait_message(
        self,
        group: str,
        type: str,
        sender: str | None = None,
        since: int | None = None,
        timeout: float = 600.0,
    ) -> Message:
        """The first message ``type`` from ``sender`` (or any machine) that counts under
        the rule of docs/sdk.md: sent after the last command started on that machine, or
        after cursor ``since``. Raises Unavailable (code ``timeout``) after ``timeout``,
        InvalidInput for a type no machine can send (``user.NAME``) or a ``timeout`` that
        is no number from 0 to 604800 (a week), NotFound if
        ``sender`` is not in the group."""
        found = self.wait_messages(group, type, [sender] if sender else None, since, timeout)
        return next(iter(found.values()))

    def wait_messages(
        self,
        group: str,
        type: str,
        senders: Names | None = None,
        since: int | None = None,
        timeout: float = 600.0,
        on_message: Callable[[Message], object] | None = None,
    ) -> dict[str, Message]:
        """``wait_message`` for several machines: one message from each of ``senders``
        (None: the first from any machine), by sender."""
        timeout = check_timeout(timeout)
        deadline = time.monotonic() + timeout
        wait = MessageWait(type, senders, since)
        try:  # within the deadline, a server that does not answer too
            if wait.senders is not None:
                wait.check_senders(self._do(calls.group(group), deadline))
            if wait.needs_floors:
                now = int(self._do(calls.event_cursor(group), deadline))
                for ev in self.events(group, since=0, types=FLOOR_TYPES):
                    if ev["cursor"] > now:
                        break
                    wait.floor(ev)
        except Unavailable as exc:
            if time.monotonic() < deadline or exc.code == "not_crc_server":
                raise
            raise wait.timeout_error(timeout) from None
        for ev in follow_events(self._sibling, group, wait.start, ("message",)):
            if ev is not None:
                msg = wait.feed(ev)
                if msg is not None and on_message is not None:
                    on_message(msg)
            if wait.done:
                return wait.found
            self._check_open()  # closed meanwhile (another thread): ends the wait
            if time.monotonic() > deadline:
                raise wait.timeout_error(timeout)
        self._check_open()  # its follower ended by close()
        raise self._stream_ended(group)

    # -- shells and forwards (master/streams.py) ----------------------------------------
    def shell(
        self,
        group: str,
        machine: str,
        argv: Sequence[str] | None = None,
        shell: str | None = None,
        cols: int = 80,
        rows: int = 24,
        term: str | None = "xterm-256color",
        record: bool | None = None,
    ) -> ShellSession:
        """A terminal on ``machine`` running ``argv`` (or ``shell``, or its login
        shell): a :class:`ShellSession` (``send``, ``recv``, ``expect``, ``resize``,
        ``wait`` for the exit code, ``close``)."""
        from .streams import connect_sync, shell_body

        body = shell_body(machine, argv, shell, cols, rows, term, record)
        info = self._do(calls.open_stream(group, body))
        ctx, _ = client_context(self.url, self.fingerprint, self.cert_pem, self._timeout)
        return connect_sync(self.url, self._token, ctx, info)

    def forward(
        self,
        group: str,
        machine: str,
        remote_port: int,
        remote_host: str = "127.0.0.1",
        local_port: int = 0,
        local_addr: str = "127.0.0.1",
    ) -> ForwardThread:
        """A context manager: listens on ``local_addr``:``local_port`` (0: any free
        port) and carries each connection to ``remote_host``:``remote_port`` as seen
        from ``machine``; ``with client.forward("lab", "web", 80) as port: ...``."""
        from .aclient import AsyncClient
        from .streams import ForwardThread, forward_spec

        spec = forward_spec(remote_port, remote_host, local_port, local_addr)
        self._check_open()  # the forward's client is a new one: not made for a closed one
        url, token, fp, pem = ",".join(self.urls), self._token, self.fingerprint, self.cert_pem
        return ForwardThread(lambda: AsyncClient(url, token, fp, pem), group, machine, spec)

    def sessions(self, group: str, limit: int = 100, probes: bool = False) -> list[dict[str, Any]]:
        """The group's latest ``limit`` ended shell sessions and forwards (who, target,
        bytes, duration, exit code, recorded), oldest first; the connections a forward
        makes at its start to check the remote end (``"probe": true``) only with
        ``probes``."""
        rows = list(self._do(calls.list_sessions(group, limit, probes)))
        return calls.shown_sessions(rows, probes)

    def recording(self, stream: str) -> str:
        """A recorded shell session as an asciinema v2 file."""
        return str(self._do(calls.recording(stream))["cast"])

    def audit(
        self, group: str | None = None, limit: int = 1000, actions: Iterable[str] = ()
    ) -> list[dict[str, Any]]:
        """Your latest ``limit`` audit records, oldest first: who started what, where,
        when. ``actions``: only records of these actions (``"kv.set"``), or of actions
        starting with one ending in a dot (``"kv."``); InvalidInput for a malformed one."""
        wanted = calls.audit_actions(actions)
        return calls.shown_audit(list(self._do(calls.audit(group, limit, wanted))), wanted)

    # -- key/value store -----------------------------------------------------------------
    def kv_set(self, group: str, key: str, value: Any) -> dict[str, Any]:
        return dict(self._do(calls.kv_set(group, key, value)))

    def kv_get(self, group: str, key: str, wait: float = 0, newer_than: int = 0) -> dict[str, Any]:
        """The key's value; with ``wait``, block until it exists with a newer version
        (``TimedOut`` after ``wait`` seconds). A wait the server turns away for now (too
        many at once: ``RateLimited``, 429) is asked again after its ``Retry-After``, and
        one cut by a server restart (``Unavailable``) every second, as long as that is
        within ``wait``."""
        call = first = calls.kv_get(group, key, wait, newer_than)
        deadline = time.monotonic() + wait if wait and wait > 0 else None
        while True:
            try:
                return dict(self._do(call))
            except TimedOut:
                if call is first:
                    raise
                # Asked again for the time left: the caller gave ``wait``.
                raise calls.kv_timed_out(key, wait, newer_than) from None
            except Unavailable as exc:  # turned away (429), or the server restarts
                delay = None if deadline is None else calls.kv_wait_delay(exc, deadline)
                if delay is None or deadline is None:
                    raise
            time.sleep(delay)
            call = calls.kv_get(
                group, key, calls.kv_wait_left(key, wait, deadline, newer_than), newer_than
            )

    def kv_list(self, group: str) -> list[dict[str, Any]]:
        return list(self._do(calls.kv_list(group)))

    # -- files --------------------------------------------------------------------------
    def upload(self, local: LocalPath) -> dict[str, Any]:
        """Upload a file's content once (skipped if the server has it for you already)."""
        path = local_path(local)
        sha, size = file_digest(path)
        head = self._request("HEAD", f"/blobs/{sha}")
        if head.status_code == 200:
            return {"sha256": sha, "size": size, "uploaded": False}

        class Chunks:
            def __iter__(self) -> Iterator[bytes]:  # from the start, each time it is sent
                # Exactly the ``size`` bytes hashed (a file growing meanwhile: its start).
                exact = ExactReader(path, sha, size)
                with open_regular(path) as fh:
                    while chunk := exact.read(fh):
                        yield chunk

        out = self._call(
            "PUT",
            f"/blobs/{sha}",
            resend=True,  # stored under its hash: the same PUT again stores the same
            content=Chunks(),
            headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
        )
        return {**out, "uploaded": True}

    def push(
        self,
        group: str,
        to: str,
        local: LocalPath,
        remote: str,
        mode: str | None = None,
        owner: str | None = None,
    ) -> dict[str, Any]:
        """Upload ``local`` and start the job writing it to ``remote`` on the targets
        (a target, path, mode or owner the server would refuse is refused first)."""
        local = local_path(local)
        remote, new_mode, name = push_fields(local, remote)
        sha = self._push_upload(group, to, local, remote, mode, owner)
        return self._push_job(group, to, sha, remote, mode, owner, new_mode, name)

    def _push_upload(
        self, group: str, to: str, local: str, remote: str, mode: str | None, owner: str | None
    ) -> str:
        """``push`` up to its job: the checks and the upload (what `crc push` stops at
        once on Ctrl-C: no job exists yet). The file's SHA-256."""
        check_upload_source(local)
        target = calls.check_push(to, remote, mode, owner)
        calls.check_targets(target, group, self.group(group))
        return str(self.upload(local)["sha256"])

    def _push_job(
        self,
        group: str,
        to: str,
        sha: str,
        remote: str,
        mode: str | None,
        owner: str | None,
        new_mode: str | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """``push``'s job, for the file uploaded as ``sha``; ``new_mode`` and ``name``:
        ``push_fields``' (left out for a server older than them)."""
        try:
            return dict(self._do(calls.push(group, to, sha, remote, mode, owner, new_mode, name)))
        except InvalidInput as exc:
            if not older_server(exc):
                raise
        return dict(self._do(calls.push(group, to, sha, remote, mode, owner)))

    def start_pull(self, group: str, machine: str, remote: str) -> dict[str, Any]:
        """Start the job that uploads ``remote`` from ``machine`` (a path with control
        characters is refused first, as a push's)."""
        check_push_path(remote)
        return dict(self._do(calls.start_pull(group, machine, remote)))

    def download_pulled(self, job_id: str, local: LocalPath) -> dict[str, Any]:
        """Save the file a finished pull job brought back to ``local`` (verified, atomic).
        An existing file keeps its mode, a new one gets the machine's file's less the
        umask (``download_mode``). InvalidInput when ``local`` cannot be written
        (``check_download_target``)."""
        local = local_path(local)
        check_download_target(local)
        info = dict(self._do(calls.pulled_file(job_id)))
        target = written_path(local)  # a link is followed: its file is replaced
        directory = os.path.dirname(target)
        try:
            fd, tmp = pull_partial(directory)
        except OSError as exc:
            raise write_error(local, exc) from None
        digest = hashlib.sha256()
        try:
            with (
                os.fdopen(fd, "wb") as fh,
                self._http.stream("GET", f"/blobs/{info['sha256']}") as resp,
            ):
                if resp.status_code >= 400:
                    raise_for(
                        self.url, resp.status_code, resp.headers.get("content-type"), resp.read()
                    )
                for chunk in resp.iter_bytes(1 << 20):
                    digest.update(chunk)
                    fh.write(chunk)
                set_download_mode(fh.fileno(), tmp, target, info.get("mode"))
            if digest.hexdigest() != info["sha256"]:
                raise Unavailable("downloaded content does not match its sha256: try again")
            os.replace(tmp, target)
        except httpx.HTTPError as exc:
            raise Unavailable(f"download failed: {exc}") from None
        except OSError as exc:
            raise write_error(local, exc) from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return info


def open_regular(local: str) -> BinaryIO:
    """``local`` opened for reading, if it is a regular file: a FIFO, a device or a
    socket is refused (InvalidInput; reading a FIFO would wait for a writer forever)."""
    try:
        mode = os.stat(local).st_mode
        if stat.S_ISREG(mode):
            fh = open(local, "rb")  # the caller closes it
            mode = os.fstat(fh.fileno()).st_mode  # the file opened (not replaced since)
            if stat.S_ISREG(mode):
                return fh
            fh.close()
    except OSError as exc:
        raise InvalidInput(f"cannot read {local}: {exc.strerror or exc}") from None
    raise InvalidInput(
        f"{local} is not a regular file but {file_kind(mode)}: only a file can be copied"
    )


def check_upload_source(local: str) -> None:
    """InvalidInput if ``local`` is no regular file that can be read, TooLarge if it is
    larger than a push takes: what ``file_digest`` would say, without reading it."""
    with open_regular(local) as fh:
        _check_file_size(local, os.fstat(fh.fileno()).st_size)


def file_digest(local: str) -> tuple[str, int]:
    """SHA-256 and size of a local file (InvalidInput if it cannot be read, or is not a
    regular file)."""
    digest = hashlib.sha256()
    size = 0
    with open_regular(local) as fh:
        # Refused before a byte is read or sent: the server would take all of it first.
        _check_file_size(local, os.fstat(fh.fileno()).st_size)
        try:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
                _check_file_size(local, size)  # grown meanwhile
        except OSError as exc:
            raise InvalidInput(f"cannot read {local}: {exc.strerror}") from None
    return digest.hexdigest(), size


def _check_file_size(local: str, size: int) -> None:
    if size > MAX_FILE_BYTES:
        raise TooLarge(file_too_large(local, "pushed"))


class ExactReader:
    """Reads the ``size`` bytes of ``local`` whose SHA-256 ``file_digest`` gave, to
    upload them under that Content-Length: no byte more (a log growing meanwhile sends
    the start that was hashed), and InvalidInput (nothing stored: the upload is cut
    before its last chunk) if the file is shorter now or those bytes changed."""

    def __init__(self, local: str, sha: str, size: int) -> None:
        self.local, self.sha, self.left = local, sha, size
        self.digest = hashlib.sha256()

    def read(self, fh: BinaryIO) -> bytes:
        """The next chunk; b"" once ``size`` bytes were read and matched."""
        if not self.left:
            return b""
        try:
            chunk = fh.read(min(1 << 20, self.left))
        except OSError as exc:
            raise InvalidInput(f"cannot read {self.local}: {exc.strerror}") from None
        self.left -= len(chunk)
        self.digest.update(chunk)
        if not chunk or (not self.left and self.digest.hexdigest() != self.sha):
            raise InvalidInput(
                f"{self.local} changed while it was read (it was "
                f"{'truncated' if not chunk else 'rewritten'}): push it again"
            )
        return chunk


def worst_exit_code(results: dict[str, Any]) -> int:
    """``crc run``'s exit code: the worst of its targets (see docs/reference.md). A
    target rate control skipped (``skipped``: the error budget spent, a canary failed)
    counts only when no other target has a code: the failure it was skipped for is what
    the exit code says (``--max-errors 1 -- 'exit 4'`` exits 4, not 125)."""
    worst = 0
    skipped = False
    for r in results.values():
        if r["status"] == "skipped":
            skipped = True
        else:
            worst = max(worst, exit_code_of(r["status"], r.get("exit_code")))
    return worst or (exit_code_of("skipped", None) if skipped else 0)
