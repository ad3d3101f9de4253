"""A fake Vultr API v2 for tests: the endpoints ``VultrProvider`` uses, checked against
Vultr's own OpenAPI file (the copy in ``reference/``, see its README).

It lives with the tests, not in the product (docs/architecture.md says why): nothing a
user runs needs it, and its dependencies (jsonschema) are the tests' own.

Why a checked fake: a hand-written fake only proves the provider agrees with the fake.
This one validates every request it receives *and* every response it sends against the
schemas of ``openapi-v2.json`` (Vultr's published OpenAPI 3.0 description), so the
provider is tested against Vultr's contract, not against our memory of it. Two
deliberate tightenings over plain JSON Schema:

* objects that list ``properties`` get ``additionalProperties: false`` (unless they are
  part of an ``allOf``): a field the OpenAPI file does not define is a violation, in
  requests (the provider invented a field) and in responses (the fake did);
* query parameters must be declared for the operation and have the declared type.

OpenAPI 3.0 schema objects are not JSON Schema: ``nullable: true`` becomes a type list
with ``"null"``, ``$ref`` is inlined, and OpenAPI-only keywords (``example``,
``deprecated``, ``x-*``...) are dropped. Validation uses JSON Schema draft 4, the base of
OpenAPI 3.0 schemas.

A request that does not validate is answered 400 with the validation message, and every
mismatch is appended to ``violations``: tests assert that list is empty.

Behaviour: bearer key check (401), optional rate limit (429 above ``rate_limit``
requests per second, like Vultr's ~30/s per IP), injected faults (``fail_next``),
instances that go pending -> active/installingbooting -> ok in ``ready_delay`` seconds,
then ``boot(instance, script)`` in a background thread with the decoded ``user_data``
(Linux) or boot startup script (Windows): the hook through which system tests run the
script in an isolated environment (``fakes.vultr_boot.LinuxBoot``). ``halt(instance_id)`` runs
in a background thread once an instance is deleted: the hook that powers such a machine
off (``DELETE`` answers at once, as Vultr's does; ``halted`` lists the instances done).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote

import jsonschema
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = [
    "DEFAULT_API_KEY",
    "OPENAPI_PATH",
    "FakeVultr",
    "FakeVultrState",
    "OpenApiSpec",
    "RecordedRequest",
    "create_app",
    "default_openapi_path",
]

log = logging.getLogger(__name__)

DEFAULT_API_KEY = "fake-vultr-key"
BootHook = Callable[[dict[str, Any], bytes], None]
HaltHook = Callable[[str], None]
_OPENAPI_ONLY = frozenset(
    {
        "nullable",
        "discriminator",
        "readOnly",
        "writeOnly",
        "xml",
        "externalDocs",
        "example",
        "examples",
        "deprecated",
    }
)
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


OPENAPI_PATH = Path(__file__).resolve().parent / "reference" / "vultr-openapi-v2.json"


def default_openapi_path() -> Path:
    """Vultr's OpenAPI file as committed with the tests (``reference/README.md``)."""
    return OPENAPI_PATH


# -- OpenAPI -> JSON Schema ------------------------------------------------------------


def _resolve(root: dict[str, Any], ref: str) -> Any:
    if not ref.startswith("#/"):
        raise ValueError(f"only local $refs are supported, not {ref}")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def to_json_schema(
    node: Any, root: dict[str, Any], strict: bool = True, seen: tuple[str, ...] = ()
) -> Any:
    """Translate an OpenAPI 3.0 schema object to JSON Schema draft 4 (see module doc)."""
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        ref = node["$ref"]
        if ref in seen:
            raise ValueError(f"recursive $ref {ref} is not supported")
        return to_json_schema(_resolve(root, ref), root, strict, (*seen, ref))
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-") or key in _OPENAPI_ONLY:
            continue
        if key == "properties":
            out[key] = {n: to_json_schema(s, root, strict, seen) for n, s in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = to_json_schema(value, root, strict, seen)
        elif key in ("allOf", "anyOf", "oneOf"):
            # allOf members see only part of the object: no additionalProperties there.
            member_strict = strict and key != "allOf"
            out[key] = [to_json_schema(s, root, member_strict, seen) for s in value]
        else:
            out[key] = value
    if strict and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if node.get("nullable") is True:
        if "type" in out:
            types = out["type"] if isinstance(out["type"], list) else [out["type"]]
            out["type"] = [*types, "null"]
            if "enum" in out and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


class _Operation(NamedTuple):
    method: str
    template: str
    pattern: re.Pattern[str]
    spec: dict[str, Any]
    params: tuple[dict[str, Any], ...]  # path-level and operation-level parameters


class OpenApiSpec:
    """The operations of an OpenAPI file, with cached validators per schema."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open(encoding="utf-8") as f:
            self.doc: dict[str, Any] = json.load(f)
        self.operations: list[_Operation] = []
        for template, item in self.doc.get("paths", {}).items():
            shared = tuple(item.get("parameters") or ())
            regex = "^" + re.sub(r"\\\{[^/]+?\\\}", "([^/]+)", re.escape(template)) + "$"
            for method, op in item.items():
                if method.upper() in _METHODS:
                    own = tuple(op.get("parameters") or ())
                    self.operations.append(
                        _Operation(method.upper(), template, re.compile(regex), op, shared + own)
                    )
        # Literal paths win over templated ones (/instances/x before /instances/{id}).
        self.operations.sort(key=lambda o: o.template.count("{"))
        self._validators: dict[tuple[str, str, str], jsonschema.Draft4Validator | None] = {}
        self._lock = threading.Lock()

    def match(self, method: str, path: str) -> tuple[_Operation, list[str]] | None:
        for op in self.operations:
            m = op.pattern.match(path)
            if m and op.method == method:
                return op, list(m.groups())
        return None

    def path_exists(self, path: str) -> bool:
        return any(op.pattern.match(path) for op in self.operations)

    def _validator(
        self, op: _Operation, kind: str, status: str = ""
    ) -> jsonschema.Draft4Validator | None:
        key = (op.method + " " + op.template, kind, status)
        with self._lock:
            if key not in self._validators:
                if kind == "request":
                    holder = op.spec.get("requestBody") or {}
                else:
                    holder = (op.spec.get("responses") or {}).get(status) or {}
                holder = to_json_schema(holder, self.doc, strict=False)  # resolves a $ref
                schema = (holder.get("content") or {}).get("application/json", {}).get("schema")
                validator = None
                if schema is not None:
                    schema = to_json_schema(schema, self.doc)
                    jsonschema.Draft4Validator.check_schema(schema)
                    validator = jsonschema.Draft4Validator(schema)
                self._validators[key] = validator
            return self._validators[key]

    def check_request(self, op: _Operation, body: Any) -> list[str]:
        """Schema errors of a JSON request body (``[]`` when it validates)."""
        validator = self._validator(op, "request")
        if validator is None:
            return [] if body is None else ["the operation takes no request body"]
        if body is None:
            required = (op.spec.get("requestBody") or {}).get("required", False)
            return ["request body required"] if required else []
        return _errors(validator, body)

    def check_response(self, op: _Operation, status: int, body: Any) -> list[str]:
        """Mismatches between a 2xx answer and the operation's declared responses."""
        if str(status) not in (op.spec.get("responses") or {}):
            return [f"status {status} is not a declared response"]
        validator = self._validator(op, "response", str(status))
        if validator is None:
            return [] if body is None else [f"status {status} declares no body"]
        if body is None:
            return [f"status {status} needs a JSON body"]
        return _errors(validator, body)

    def check_query(self, op: _Operation, query: dict[str, str]) -> list[str]:
        """Errors of query parameters: undeclared, mistyped or missing."""
        declared = {p["name"]: p for p in op.params if p.get("in") == "query"}
        errors = [f"query parameter {k!r} is not declared" for k in query if k not in declared]
        for name, param in declared.items():
            if name not in query:
                if param.get("required"):
                    errors.append(f"query parameter {name!r} is required")
                continue
            schema = to_json_schema(param.get("schema") or {}, self.doc)
            value: Any = query[name]
            kind = schema.get("type")
            try:
                if kind == "integer":
                    value = int(value)
                elif kind == "number":
                    value = float(value)
                elif kind == "boolean" and value in ("true", "false"):
                    value = value == "true"
            except ValueError:
                errors.append(f"query parameter {name!r}: {value!r} is not an {kind}")
                continue
            errors += [
                f"query parameter {name!r}: {e}"
                for e in _errors(jsonschema.Draft4Validator(schema), value)
            ]
        return errors


def _errors(validator: jsonschema.Draft4Validator, instance: Any) -> list[str]:
    found = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<body>'}: {e.message}" for e in found]


@functools.lru_cache(maxsize=4)
def _load_spec(path: str, mtime: float) -> OpenApiSpec:
    return OpenApiSpec(Path(path))


# -- the fake's state ------------------------------------------------------------------


class RecordedRequest(NamedTuple):
    """One request the fake received: method, path below ``/v2`` (no query), decoded
    JSON body (``None`` if none), query parameters, and the status it answered."""

    method: str
    path: str
    json: Any
    query: dict[str, str]
    status: int


class _Reply(NamedTuple):
    status: int
    body: Any = None
    headers: dict[str, str] = {}


class _Fault(NamedTuple):
    reply: _Reply
    after_handling: bool
    method: str | None
    path: str | None
    when: Callable[[Any], bool] | None


def _error(status: int, message: str, **headers: str) -> _Reply:
    # Vultr's error shape (API v2 docs, "Response Codes"): {"error": "...", "status": N}.
    return _Reply(status, {"error": message, "status": status}, headers)


def _b64decode(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())


class FakeVultrState:
    """Everything the fake knows; thread-safe. Tests read ``requests``, ``violations``,
    ``instances``, ``scripts``, ``passwords``, ``booted``, ``halted`` and ``boot_errors``
    (errors of both hooks), and inject failures with ``fail_next``. Call ``close()`` to
    stop boot threads (``FakeVultr.stop`` does)."""

    def __init__(
        self,
        spec: OpenApiSpec,
        *,
        api_key: str,
        boot: BootHook | None,
        rate_limit: int | None,
        ready_delay: float,
        halt: HaltHook | None = None,
    ) -> None:
        self.spec = spec
        self.api_key = api_key
        self.boot = boot
        self.halt = halt
        self.rate_limit = rate_limit
        self.ready_delay = ready_delay
        # A broken API: lists go on for this many empty pages past their end, each with a
        # new next cursor.
        self.endless_pages = 0
        # A new instance is listed (GET /instances) only this many seconds after it was
        # made; GET /instances/{id} knows it at once.
        self.list_delay = 0.0
        # POST /instances makes the instance at once and answers only this many seconds
        # later (a slow create); setting it to 0 again lets waiting answers go.
        self.create_delay = 0.0
        # Every answer says "Connection: close": the client opens a connection per request
        # (a relay in front then sees each request on a connection of its own).
        self.close_connections = False
        self._created_at: dict[str, float] = {}
        self.instances: dict[str, dict[str, Any]] = {}
        self.scripts: dict[str, dict[str, Any]] = {}
        self.requests: list[RecordedRequest] = []
        self.violations: list[str] = []
        self.booted: list[str] = []
        self.halted: list[str] = []
        self.passwords: dict[str, str] = {}  # default_password per instance id
        self.boot_errors: list[BaseException] = []
        self._boot_script: dict[str, bytes] = {}
        self._ips: dict[str, tuple[str, str]] = {}  # given out when an instance turns active
        self._faults: deque[_Fault] = deque()
        self._hits: deque[float] = deque()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ip_seq = 0

    def fail_next(
        self,
        status: int,
        times: int = 1,
        *,
        message: str = "injected failure",
        retry_after: float | None = None,
        after_handling: bool = False,
        method: str | None = None,
        path: str | None = None,
        when: Callable[[Any], bool] | None = None,
    ) -> None:
        """Answer the next ``times`` authenticated requests with ``status``; with
        ``method``, ``path`` (a prefix of the path below ``/v2``) and/or ``when`` (true
        of the decoded JSON body), only the next ``times`` such requests, the others
        being answered as usual.

        ``after_handling=True`` carries the request out first and then loses the answer
        (a 5xx or gateway timeout after the instance was made)."""
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        fault = _Fault(_error(status, message, **headers), after_handling, method, path, when)
        with self._lock:
            self._faults.extend([fault] * times)

    def _take_fault(self, method: str, path: str, body: Any) -> _Fault | None:
        with self._lock:
            for i, fault in enumerate(self._faults):
                if (
                    (fault.method is None or fault.method == method)
                    and (fault.path is None or path.startswith(fault.path))
                    and (fault.when is None or fault.when(body))
                ):
                    del self._faults[i]
                    return fault
        return None

    def close(self, timeout: float = 10.0) -> None:
        """Stop instance lifecycles; waits for running boot hooks up to ``timeout``."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in list(self._threads):
            t.join(max(0.0, deadline - time.monotonic()))

    # -- request pipeline --------------------------------------------------------------

    def handle(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], raw: bytes
    ) -> tuple[Any, _Reply]:
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                return None, self._violation(
                    _error(400, "request body is not JSON"),
                    f"{method} {path}: request body is not JSON",
                )
        if headers.get("authorization") != f"Bearer {self.api_key}":
            return body, _error(401, "Invalid API token.")
        taken = self._take_fault(method, path, body)
        checked = self._check(method, path, query, headers, raw, body)
        # An injected fault or a 429 answers a request that is checked all the same:
        # a test that makes Vultr fail still proves what the provider sent was valid.
        if taken is not None and not taken.after_handling:
            return body, taken.reply
        if self._rate_limited():
            return body, _error(429, "Rate limit exceeded.")
        if isinstance(checked, _Reply):
            return body, checked
        op, args, body = checked
        fault = None if taken is None else taken.reply
        handler = self._handlers().get((method, op.template))
        if handler is None:
            return body, self._violation(
                _error(501, f"the fake does not implement {method} {op.template}"),
                f"{method} {op.template}: not implemented by the fake",
            )
        with self._lock:
            reply = handler(args, query, body)
        if 200 <= reply.status < 300:
            problems = self.spec.check_response(op, reply.status, reply.body)
            if problems:
                text = "; ".join(problems)
                return body, self._violation(
                    _error(500, f"fake sent an invalid response: {text}"),
                    f"{method} {op.template} response: {text}",
                )
        return body, reply if fault is None else fault

    def _check(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        raw: bytes,
        body: Any,
    ) -> tuple[_Operation, list[str], Any] | _Reply:
        """The request checked against the OpenAPI file: its operation, path arguments
        and body, or the 4xx answer to a violation (recorded in ``violations``)."""
        found = self.spec.match(method, path)
        if found is None:
            why = "method not allowed" if self.spec.path_exists(path) else "unknown path"
            return self._violation(
                _error(404, f"{why}: {method} {path}"),
                f"{method} {path}: not in the OpenAPI file ({why})",
            )
        op, quoted_args = found
        args = [unquote(a) for a in quoted_args]
        problems = self.spec.check_query(op, query)
        if (
            method in ("POST", "PUT", "PATCH")
            and raw
            and not headers.get("content-type", "").startswith("application/json")
        ):
            problems.append("Content-Type must be application/json")
        if method in ("POST", "PUT", "PATCH") and body is None and "requestBody" in op.spec:
            body = {}  # no body reads as an empty object: required fields still count
        problems += self.spec.check_request(op, body)
        if problems:
            text = "; ".join(problems)
            return self._violation(
                _error(400, f"invalid request: {text}"), f"{method} {op.template} request: {text}"
            )
        return op, args, body

    def record(self, entry: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(entry)

    def _violation(self, reply: _Reply, text: str) -> _Reply:
        with self._lock:
            self.violations.append(text)
        return reply

    def _rate_limited(self) -> bool:
        if self.rate_limit is None:
            return False
        now = time.monotonic()
        with self._lock:
            while self._hits and self._hits[0] <= now - 1.0:
                self._hits.popleft()
            if len(self._hits) >= self.rate_limit:
                return True  # rejected requests do not count against the window
            self._hits.append(now)
            return False

    def _handlers(self) -> dict[tuple[str, str], Callable[..., _Reply]]:
        return {
            ("POST", "/instances"): self._create_instance,
            ("GET", "/instances"): self._list_instances,
            ("GET", "/instances/{instance-id}"): self._get_instance,
            ("DELETE", "/instances/{instance-id}"): self._delete_instance,
            ("POST", "/startup-scripts"): self._create_script,
            ("GET", "/startup-scripts"): self._list_scripts,
            ("GET", "/startup-scripts/{startup-id}"): self._get_script,
            ("DELETE", "/startup-scripts/{startup-id}"): self._delete_script,
        }

    # -- endpoints (called with the lock held) -----------------------------------------

    def _create_instance(self, args: list[str], query: dict[str, str], b: dict[str, Any]) -> _Reply:
        if not b["region"] or not b["plan"]:
            return _error(400, "region and plan are required")
        sources = [k for k in ("os_id", "iso_id", "snapshot_id", "app_id", "image_id") if k in b]
        if len(sources) != 1:
            return _error(400, "give exactly one of os_id, iso_id, snapshot_id, app_id, image_id")
        script = b""
        if "user_data" in b:
            decoded = _b64decode(b["user_data"])
            if decoded is None:
                return _error(400, "user_data must be base64 encoded")
            script = decoded
        if "script_id" in b:
            if b["script_id"] not in self.scripts:
                return _error(400, "Invalid startup script.")
            script = _b64decode(self.scripts[b["script_id"]]["script"]) or b""
        iid = str(uuid.uuid4())
        vpc = bool(b.get("enable_vpc") or b.get("attach_vpc"))
        inst: dict[str, Any] = {  # fields of components.schemas.instance
            "id": iid,
            "os": f"os {b.get('os_id', b.get('image_id', ''))}",
            "ram": 1024,
            "disk": 25,
            "main_ip": "0.0.0.0",
            "vcpu_count": 1,
            "region": b["region"],
            "plan": b["plan"],
            "date_created": _now(),
            "status": "pending",
            "allowed_bandwidth": 1000,
            "netmask_v4": "",
            "gateway_v4": "0.0.0.0",
            "power_status": "running",
            "server_status": "none",
            "v6_networks": [],
            "hostname": b.get("hostname", ""),
            "label": b.get("label", ""),
            "internal_ip": "",
            "kvm": "",
            "os_id": b.get("os_id", 0),
            "app_id": b.get("app_id", 0),
            "image_id": b.get("image_id", ""),
            "firewall_group_id": b.get("firewall_group_id", ""),
            "features": [],
            "tags": list(b.get("tags") or []),
        }
        self._ip_seq += 1
        self._ips[iid] = (
            f"192.0.2.{self._ip_seq % 250 + 1}",
            f"10.1.96.{self._ip_seq % 250 + 1}" if vpc else "",
        )
        self.instances[iid] = inst
        self._created_at[iid] = time.monotonic()
        self._boot_script[iid] = script
        password = self.passwords[iid] = base64.b64encode(os.urandom(12)).decode()
        t = threading.Thread(
            target=self._lifecycle, args=(iid,), name=f"fake-vultr-{iid}", daemon=True
        )
        self._threads.append(t)
        t.start()
        return _Reply(202, {"instance": {**inst, "default_password": password}})

    def _list_instances(self, args: list[str], q: dict[str, str], b: Any) -> _Reply:
        now = time.monotonic()
        items = [
            i
            for i in self.instances.values()
            if now - self._created_at.get(i["id"], 0.0) >= self.list_delay
            and ("tag" not in q or q["tag"] in i["tags"])
            and all(k not in q or q[k] == i[k] for k in ("label", "main_ip", "region"))
        ]
        return self._page("instances", items, q)

    def _get_instance(self, args: list[str], q: dict[str, str], b: Any) -> _Reply:
        inst = self.instances.get(args[0])
        return (
            _Reply(200, {"instance": dict(inst)}) if inst else _error(404, "Invalid instance-id.")
        )

    def _delete_instance(self, args: list[str], q: dict[str, str], b: Any) -> _Reply:
        if self.instances.pop(args[0], None) is None:
            return _error(404, "Invalid instance-id.")
        self._boot_script.pop(args[0], None)
        if self.halt is not None:
            t = threading.Thread(
                target=self._power_off,
                args=(args[0],),
                name=f"fake-vultr-halt-{args[0]}",
                daemon=True,
            )
            self._threads.append(t)
            t.start()
        return _Reply(204)

    def _create_script(self, args: list[str], q: dict[str, str], b: dict[str, Any]) -> _Reply:
        kind = b.get("type", "boot")
        if kind not in ("boot", "pxe"):
            return _error(400, "type must be boot or pxe")
        if _b64decode(b["script"]) is None:
            return _error(400, "script must be base64 encoded")
        sid, now = str(uuid.uuid4()), _now()
        self.scripts[sid] = {
            "id": sid,
            "date_created": now,
            "date_modified": now,
            "name": b["name"],
            "type": kind,
            "script": b["script"],
        }
        return _Reply(201, {"startup_script": dict(self.scripts[sid])})

    def _list_scripts(self, args: list[str], q: dict[str, str], b: Any) -> _Reply:
        # Vultr's list omits the script body (see the list-startup-scripts example).
        items = [{k: v for k, v in s.items() if k != "script"} for s in self.scripts.values()]
        return self._page("startup_scripts", items, q)

    def _get_script(self, args: list[str], q: dict[str, str], b: Any) -> _Reply:
        s = self.scripts.get(args[0])
        return (
            _Reply(200, {"startup_script": dict(s)})
            if s
            else _error(404, "Invalid startup script.")
        )

    def _delete_script(self, args: list[str], q: dict[str, str], b: Any) -> _Reply:
        if self.scripts.pop(args[0], None) is None:
            return _error(404, "Invalid startup script.")
        return _Reply(204)

    def _page(self, key: str, items: list[dict[str, Any]], q: dict[str, str]) -> _Reply:
        # "Meta and Pagination": per_page (default 100, max 500), opaque cursors in
        # meta.links.next / prev, "" when there is no such page.
        per_page = int(q.get("per_page", 100))
        if not 1 <= per_page <= 500:
            return _error(400, "per_page must be between 1 and 500")
        start = 0
        if q.get("cursor"):
            decoded = _b64decode(q["cursor"]) or b""
            m = re.fullmatch(rb"(?:next|prev)__(\d+)", decoded)
            if not m:
                return _error(400, "Invalid cursor.")
            start = int(m.group(1))

        def cursor(kind: str, offset: int) -> str:
            return base64.b64encode(f"{kind}__{offset}".encode()).decode()

        end = start + per_page
        links = {
            "next": cursor("next", end) if end < len(items) + self.endless_pages * per_page else "",
            "prev": cursor("prev", max(0, start - per_page)) if start > 0 else "",
        }
        return _Reply(
            200,
            {
                key: [dict(i) for i in items[start:end]],
                "meta": {"total": len(items), "links": links},
            },
        )

    # -- lifecycle ---------------------------------------------------------------------

    def _lifecycle(self, iid: str) -> None:
        """pending -> active (installingbooting, IP assigned) -> ok, then boot()."""
        if self._stop.wait(self.ready_delay / 2):
            return
        with self._lock:
            inst = self.instances.get(iid)
            if inst is None:
                return
            main_ip, private_ip = self._ips[iid]
            inst.update(
                status="active",
                server_status="installingbooting",
                main_ip=main_ip,
                internal_ip=private_ip,
                netmask_v4="255.255.254.0",
                gateway_v4="192.0.2.1",
            )
        if self._stop.wait(self.ready_delay / 2):
            return
        with self._lock:
            inst = self.instances.get(iid)
            if inst is None:
                return
            inst["server_status"] = "ok"
            snapshot, script = dict(inst), self._boot_script.pop(iid, b"")
        if self.boot is not None:
            try:
                self.boot(snapshot, script)
            except Exception as exc:
                log.exception("fake Vultr boot hook failed for instance %s", iid)
                with self._lock:
                    self.boot_errors.append(exc)
        with self._lock:
            self.booted.append(iid)

    def _power_off(self, iid: str) -> None:
        assert self.halt is not None
        try:
            self.halt(iid)
        except Exception as exc:
            log.exception("fake Vultr halt hook failed for instance %s", iid)
            with self._lock:
                self.boot_errors.append(exc)
        with self._lock:
            self.halted.append(iid)


# -- the app and its runner ------------------------------------------------------------


def create_app(
    boot: BootHook | None = None,
    rate_limit: int | None = None,
    *,
    openapi_path: str | Path | None = None,
    api_key: str = DEFAULT_API_KEY,
    ready_delay: float = 0.2,
    halt: HaltHook | None = None,
) -> Starlette:
    """The fake Vultr API v2 under ``/v2``; its state is ``app.state.vultr``.

    ``boot(instance, script)`` runs in a background thread once an instance has booted
    (``ready_delay`` s after creation), ``halt(instance_id)`` once one is deleted.
    ``rate_limit`` answers 429 above that many requests per second. ``openapi_path``
    defaults to the committed copy of Vultr's file.
    """
    path = Path(openapi_path) if openapi_path is not None else default_openapi_path()
    if not path.is_file():
        raise FileNotFoundError(f"Vultr OpenAPI file not found at {path}")
    spec = _load_spec(str(path.resolve()), path.stat().st_mtime)
    state = FakeVultrState(
        spec, api_key=api_key, boot=boot, rate_limit=rate_limit, ready_delay=ready_delay, halt=halt
    )

    async def endpoint(request: Request) -> Response:
        # Match on the raw path: an id is one segment even if it holds a quoted "/".
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        path = raw_path.decode("latin-1").split("?", 1)[0].removeprefix("/v2")
        query = dict(request.query_params)
        raw = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        body, reply = state.handle(request.method, path, query, headers, raw)
        if request.method == "POST" and path == "/instances":
            held = time.monotonic()
            while time.monotonic() - held < state.create_delay:
                await asyncio.sleep(0.05)
        state.record(RecordedRequest(request.method, path, body, query, reply.status))
        sent_headers = {
            **reply.headers,
            **({"Connection": "close"} if state.close_connections else {}),
        }
        if reply.body is None:
            return Response(status_code=reply.status, headers=sent_headers)
        return Response(
            json.dumps(reply.body),
            status_code=reply.status,
            headers=sent_headers,
            media_type="application/json",
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        state.close()

    app = Starlette(
        routes=[Route("/v2/{path:path}", endpoint, methods=list(_METHODS))], lifespan=lifespan
    )
    app.state.vultr = state
    return app


class FakeVultr:
    """Runs ``create_app(...)`` with uvicorn on 127.0.0.1 (free port) in a thread.

    Use as a context manager, or ``start()`` / ``stop()``. Point the provider at ``url``
    (``http://127.0.0.1:PORT/v2``) with ``api_key``.
    """

    def __init__(
        self,
        boot: BootHook | None = None,
        rate_limit: int | None = None,
        *,
        openapi_path: str | Path | None = None,
        api_key: str = DEFAULT_API_KEY,
        ready_delay: float = 0.2,
        halt: HaltHook | None = None,
    ) -> None:
        self.api_key = api_key
        self.app = create_app(
            boot,
            rate_limit,
            openapi_path=openapi_path,
            api_key=api_key,
            ready_delay=ready_delay,
            halt=halt,
        )
        self.state: FakeVultrState = self.app.state.vultr
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._port: int | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT/v2``, the base URL to give ``VultrProvider``."""
        if self._port is None:
            raise RuntimeError("FakeVultr is not started: call start() first")
        return f"http://127.0.0.1:{self._port}/v2"

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.state.requests

    @property
    def violations(self) -> list[str]:
        return self.state.violations

    def start(self, timeout: float = 10.0) -> FakeVultr:
        """Listen on a free loopback port; returns once requests are accepted."""
        # proto=IPPROTO_TCP: asyncio then sets TCP_NODELAY on accepted connections
        # (else Nagle + delayed ACK cost ~40 ms per keep-alive request).
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.bind(("127.0.0.1", 0))
        self._port = self._sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            loop="asyncio",
            http="h11",
            ws="none",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            name="fake-vultr",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the fake Vultr API did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop the server and the instance lifecycles; safe to call twice."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        if self._sock is not None:
            self._sock.close()
        self.state.close()
        self._server, self._thread, self._sock = None, None, None

    def __enter__(self) -> FakeVultr:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
