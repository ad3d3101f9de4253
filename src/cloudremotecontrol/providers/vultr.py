"""Vultr provider: a thin, synchronous httpx client for the few API v2 endpoints we use.

Endpoints (paths of ``openapi-v2.json``, Vultr API v2, base ``https://api.vultr.com/v2``)::

    POST   /instances                    create-instance (202, ``default_password`` only here)
    GET    /instances?tag=&per_page=&cursor=   list-instances (cursor pagination)
    GET    /instances/{instance-id}      get-instance
    DELETE /instances/{instance-id}      delete-instance (204)
    POST   /startup-scripts              create-startup-script (201; Windows only)
    GET    /startup-scripts              list-startup-scripts (``purge_startup_scripts``)
    DELETE /startup-scripts/{startup-id} delete-startup-script (204)

Why Linux and Windows differ: Linux images run ``user_data`` through cloud-init, so the
startup script travels as base64 ``user_data``. Vultr's Windows images do not; there a
*boot* startup script (saved as ``C:\\image\\firstboot.cmd``, run once as Administrator)
is created first and named by ``script_id``. Its id is kept in the instance's tag
``crc-script:<id>`` so ``destroy`` can delete it without any local state.

Rate limits: Vultr answers HTTP 429 beyond ~30 requests/s per IP. Every request is retried
on 429 with exponential backoff and jitter (honouring ``Retry-After``), and idempotent
requests (GET, DELETE) on 5xx and transport errors, a bounded number of times.
``POST /instances`` is not blindly retried after an ambiguous failure (5xx, timeout): it
first looks for the instance by its tags, so a flaky API never makes two paid VMs. A
POST that never connected (refused, DNS, TLS handshake) reached nobody: it is retried,
and its error says so (``ProviderError.unsent``), as does a POST still rate-limited
(429) after its retries: Vultr carried none of them out. Unless an earlier try of the
same create lost its answer: that one may have made the instance.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import email.utils
import json
import os
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from ..errors import CrcError, ProviderError
from ..protocol.names import check_name
from .base import (
    MACHINE_TAG_PREFIX,
    Capabilities,
    Feature,
    Instance,
    MachineSpec,
    Provider,
    instance_label,
    machine_tag,
    scenario_tag,
    tag_value,
)

__all__ = [
    "API_KEY_ENV",
    "API_URL_ENV",
    "DEFAULT_BASE_URL",
    "SCRIPT_TAG_PREFIX",
    "RetryPolicy",
    "VultrProvider",
]

DEFAULT_BASE_URL = "https://api.vultr.com/v2"
API_KEY_ENV = "VULTR_API_KEY"
API_URL_ENV = "CRC_VULTR_API_URL"
SCRIPT_TAG_PREFIX = "crc-script:"
_SCRIPT_NAME_PREFIX = "crc:"  # startup script name: crc:<scenario>/<machine>

# The request fields of POST /instances in openapi-v2.json that MachineSpec.extra may set.
# user_data, script_id and tags carry the bootstrap and the scenario bookkeeping, label
# (<scenario>-<machine>) and hostname (the machine's name) are what the docs promise:
# not overridable. region, plan and os_id/image_id come from the spec itself.
_EXTRA_FIELDS = frozenset(
    {
        "activation_email",
        "app_id",
        "attach_private_network",
        "attach_vpc",
        "backups",
        "ddos_protection",
        "enable_ipv6",
        "enable_private_network",
        "enable_vpc",
        "firewall_group_id",
        "image_id",
        "ipxe_chain_url",
        "iso_id",
        "os_id",
        "reserved_ipv4",
        "snapshot_id",
        "sshkey_id",
    }
)
_RESERVED_FIELDS = frozenset(
    {"user_data", "script_id", "tags", "tag", "region", "plan", "label", "hostname"}
)
# What each option must be: openapi-v2.json paths./instances.post.requestBody.
_OPTION_KINDS: dict[str, str] = {
    "activation_email": "boolean",
    "app_id": "integer",
    "attach_private_network": "strings",
    "attach_vpc": "strings",
    "backups": "enabled/disabled",
    "ddos_protection": "boolean",
    "enable_ipv6": "boolean",
    "enable_private_network": "boolean",
    "enable_vpc": "boolean",
    "firewall_group_id": "string",
    "image_id": "string",
    "ipxe_chain_url": "string",
    "iso_id": "string",
    "os_id": "integer",
    "reserved_ipv4": "string",
    "snapshot_id": "string",
    "sshkey_id": "strings",
}
# What a new instance boots from: exactly one (the machine's image is the os_id or
# image_id, unless one of these options is given).
_IMAGE_SOURCES = ("os_id", "image_id", "iso_id", "snapshot_id", "app_id")
# A machine's image is an os_id in ASCII digits ("2284"; str.isdigit() also takes "²",
# which int() does not), of at most 18 digits (an int64, and well within what int()
# converts), or else an image_id. Region, plan and image_id are ids: printable ASCII
# without spaces ("ewr", "vc2-1c-1gb", "openlitespeed-wordpress").
_DIGITS = re.compile(r"[0-9]+")
_OS_ID = re.compile(r"[0-9]{1,18}")
_ID = re.compile(r"[!-~]{1,100}")


def check_options(options: Mapping[str, Any]) -> list[str]:
    """What Vultr would refuse in a machine's options (``provider:``), found before any
    instance is created (and billed): a value of the wrong type, two image sources."""
    problems = []
    for name, value in options.items():
        kind = _OPTION_KINDS.get(str(name))
        if kind is None or _is_kind(value, kind):
            continue
        want = {
            "boolean": "true or false",
            "integer": "a whole number",
            "string": "a text",
            "strings": "a list of texts",
            "enabled/disabled": "enabled or disabled",
        }[kind]
        problems.append(f"{name} must be {want}, not {_shown(value)}"[:300])
    for name in ("os_id", "app_id"):  # ids count from 1 (list-os, list-applications)
        value = options.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            problems.append(f"{name} must be 1 or more, not {value}"[:300])
    sources = [k for k in _IMAGE_SOURCES if k in options]
    if len(sources) > 1:
        problems.append(f"give one image source, not {len(sources)}: {', '.join(sources)}")
    return problems


def _shown(value: Any) -> str:
    """``value`` as a scenario file may write it (``true``, ``null``, ``["a", 1]``), not as
    Python does (``True``, ``None``); a text in quotes (``'yes'``: not the boolean)."""
    if isinstance(value, str):
        return repr(value)
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):  # a date, .nan, !!binary: as YAML reads it
        return str(value)


def check_field(name: str, value: str) -> str | None:
    """What Vultr would refuse in a machine's region, plan or image, found when the
    scenario is loaded: an image that is neither an os_id nor an image_id, an id that
    cannot be one (spaces, characters beyond ASCII, too long)."""
    if name == "image" and _DIGITS.fullmatch(value):
        if _OS_ID.fullmatch(value) and int(value) >= 1:
            return None
        return f"an os_id is a whole number from 1 (at most 18 digits), not {value!r}"[:200]
    if _ID.fullmatch(value):
        return None
    if name == "image":
        want = "a Vultr os_id (digits 0-9, e.g. 2284) or an image_id"
    else:
        want = f"a Vultr {name} id (e.g. {'ewr' if name == 'region' else 'vc2-1c-1gb'})"
    return (
        f"expected {want}: printable ASCII without spaces, at most 100 characters, "
        + (f"not {value!r}"[:200])
    )


def _os_id(image: str) -> int | None:
    """The os_id a machine's image names, or ``None`` for an image_id."""
    return int(image) if _OS_ID.fullmatch(image) else None


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str) and value != ""
    if kind == "strings":
        return isinstance(value, list) and all(isinstance(v, str) and v for v in value)
    return value in ("enabled", "disabled")


_MAX_PER_PAGE = 500  # list-instances: "Default is 100 and Max is 500."
# A list is read to its end (meta.links.next) in at most this many pages: 50,000 items at
# the default page size, far beyond an account's instances or startup scripts. An API
# that keeps handing out new cursors would otherwise be followed forever.
_MAX_PAGES = 500


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to retry. Delays are ``base_delay * 2**attempt`` (capped at ``max_delay``)
    with "equal jitter": half fixed, half random, so many masters do not retry in step."""

    rate_limit_retries: int = 6  # HTTP 429: ~0.5+1+2+4+8+16 s before giving up
    server_error_retries: int = 3  # HTTP 5xx and transport errors
    base_delay: float = 0.5
    max_delay: float = 30.0


class _Ambiguous(ProviderError):
    """A non-idempotent request may or may not have taken effect (5xx, read timeout)."""


class VultrProvider(Provider):
    """Create, find and destroy Vultr instances for scenarios.

    ``api_key`` defaults to ``$VULTR_API_KEY``; ``base_url`` to ``$CRC_VULTR_API_URL`` or
    ``https://api.vultr.com/v2`` (the tests point it at their fake Vultr API). Pass your
    own ``client`` to control transport settings; it is then yours to close. Otherwise
    call ``close()`` or use the provider as a context manager. ``sleep``/``clock``/``rng``
    and ``retry`` are injectable so tests do not wait.
    """

    name = "vultr"
    capabilities = Capabilities(
        features=frozenset({Feature.SERVER_TEARDOWN}),
        oses=frozenset({"linux", "windows"}),
        required=("region", "plan", "image"),
        machine_options=_EXTRA_FIELDS,  # further POST /instances fields
        check_options=check_options,
        check_field=check_field,
        image_options=frozenset(_IMAGE_SOURCES),
    )

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        client: httpx.Client | None = None,
        *,
        retry: RetryPolicy | None = None,
        poll_interval: float = 5.0,
        page_size: int = 100,
        timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        if not key.strip():
            raise ProviderError(
                f"no Vultr API key: set {API_KEY_ENV} (Vultr portal > Account > API)",
                provider=self.name,
            )
        self._key = key.strip()
        url = base_url or os.environ.get(API_URL_ENV) or DEFAULT_BASE_URL
        self.base_url = url.rstrip("/")
        self._owns_client = client is None
        self._client = client if client is not None else httpx.Client(timeout=timeout)
        self.retry = retry or RetryPolicy()
        self.poll_interval = poll_interval
        self.page_size = max(1, min(page_size, _MAX_PER_PAGE))
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], *, server_url: str | None) -> VultrProvider:
        """The key from ``$VULTR_API_KEY``, the API from ``$CRC_VULTR_API_URL`` or Vultr's."""
        return cls()

    @classmethod
    def for_teardown(cls, credential: str) -> VultrProvider:
        """On the server: act with the API key a master handed over; the API URL is the
        server's own setting (``$CRC_VULTR_API_URL`` or Vultr's), never the master's."""
        return cls(api_key=credential, poll_interval=2.0)

    def teardown_credential(self) -> str:
        """The API key, for a server that destroys the machines when a TTL passes
        (``on_ttl: destroy``: the user's explicit opt-in)."""
        return self._key

    def __repr__(self) -> str:  # never show the key
        return f"VultrProvider(base_url={self.base_url!r})"

    def close(self) -> None:
        """Close the HTTP client if this provider created it."""
        if self._owns_client:
            self._client.close()

    # -- the Provider interface ------------------------------------------------------

    def create(self, scenario: str, spec: MachineSpec, startup_script: str) -> Instance:
        """Create the instance for ``spec``; returns at once, with ``default_password``.

        Call ``wait_running`` next. On Windows a boot startup script is created first and
        deleted again if the instance cannot be created. If Vultr's answer got lost (5xx,
        timeout) the instance is looked up by its tags instead of being created twice;
        ``default_password`` is then ``None`` (Vultr shows it only in the lost answer).
        """
        check_name(scenario, "scenario")
        check_name(spec.name, "machine")
        if spec.os not in ("linux", "windows"):
            raise ProviderError(
                f"unknown os {spec.os!r} for machine {spec.name}: use linux or windows",
                provider=self.name,
            )
        body = self._instance_request(scenario, spec)
        script_id: str | None = None
        if spec.os == "windows":
            script_id = self._create_startup_script(scenario, spec.name, startup_script)
            body["script_id"] = script_id
            body["tags"].append(SCRIPT_TAG_PREFIX + script_id)
        else:
            body["user_data"] = _b64(startup_script)
        try:
            data = self._create_instance(scenario, spec.name, body)
        except CrcError:
            if script_id is not None:
                with contextlib.suppress(CrcError):  # keep the original error
                    self._delete(f"/startup-scripts/{_seg(script_id)}")
            raise
        return _to_instance(data)

    def get(self, instance_id: str) -> Instance | None:
        """The instance, or ``None`` if Vultr does not know it (HTTP 404)."""
        raw = self._get_raw(instance_id)
        return None if raw is None else _to_instance(raw)

    def destroy(self, instance_id: str) -> None:
        """Delete the instance and its Windows startup script; already gone is fine."""
        raw = self._get_raw(instance_id)
        if raw is None:
            return
        self._delete(f"/instances/{_seg(instance_id)}")
        script_id = tag_value(raw.get("tags") or [], SCRIPT_TAG_PREFIX)
        if script_id:
            # The instance is gone (the bill stops): a script that cannot be deleted now
            # must not make it look alive. cleanup() removes it by name afterwards.
            with contextlib.suppress(ProviderError):
                self._delete(f"/startup-scripts/{_seg(script_id)}")

    def wait_running(self, instance_id: str, timeout: float) -> Instance:
        """Poll every ``poll_interval`` s until the instance is active, running and booted
        (``server_status`` ok). ``ProviderError`` on timeout or if the instance vanishes."""
        deadline = self._clock() + timeout
        while True:
            raw = self._get_raw(instance_id)
            if raw is None:
                raise ProviderError(
                    f"Vultr instance {instance_id} disappeared while waiting "
                    "for it to run (deleted in the portal?)",
                    provider=self.name,
                    instance=instance_id,
                )
            inst = _to_instance(raw)
            if inst.ready:
                return inst
            left = deadline - self._clock()
            if left <= 0:
                raise ProviderError(
                    f"Vultr instance {inst.label or instance_id} ({instance_id}) is not running "
                    f"after {timeout:g}s (status {raw.get('status')}, power "
                    f"{raw.get('power_status')}, server {raw.get('server_status')}): look at it "
                    "in the Vultr portal, or wait longer",
                    provider=self.name,
                    instance=instance_id,
                    status=raw.get("status"),
                )
            self._sleep(min(self.poll_interval, left))

    def list(self, scenario: str) -> builtins.list[Instance]:
        """Every instance tagged ``crc-scenario:<scenario>``, across all pages."""
        want = scenario_tag(scenario)
        # list-instances offers `tag` (marked deprecated in openapi-v2.json, the only tag
        # filter it has); filter again here in case the API ever stops honouring it.
        raws = self._pages("/instances", "instances", {"tag": want})
        return [_to_instance(r) for r in raws if want in (r.get("tags") or [])]

    def cleanup(self, scenario: str) -> dict[str, int]:
        """The scenario's startup scripts (``purge_startup_scripts``)."""
        return {"startup_scripts": self.purge_startup_scripts(scenario)}

    # -- Vultr specifics ---------------------------------------------------------------

    def purge_startup_scripts(self, scenario: str) -> int:
        """Delete the startup scripts ``create`` made for ``scenario`` (named
        ``crc:<scenario>/<machine>``); returns how many. Call after destroying the
        scenario's instances, to clean up after an instance deleted outside ``crc``."""
        prefix = f"{_SCRIPT_NAME_PREFIX}{scenario}/"
        scripts = self._pages("/startup-scripts", "startup_scripts", {})
        gone = 0
        for s in scripts:
            if str(s.get("name", "")).startswith(prefix) and s.get("id"):
                self._delete(f"/startup-scripts/{_seg(str(s['id']))}")
                gone += 1
        return gone

    # -- internals ---------------------------------------------------------------------

    def _instance_request(self, scenario: str, spec: MachineSpec) -> dict[str, Any]:
        # Fields: openapi-v2.json paths./instances.post.requestBody (region and plan required).
        body: dict[str, Any] = {
            "region": spec.region,
            "plan": spec.plan,
            "label": instance_label(scenario, spec.name),
            "hostname": spec.name,
            "tags": [scenario_tag(scenario), machine_tag(spec.name), *spec.tags],
        }
        fields = {"region": spec.region, "plan": spec.plan}
        if any(k in spec.extra for k in _IMAGE_SOURCES):
            pass  # the machine's options say what it boots from
        elif spec.image:
            fields["image"] = spec.image
            os_id = _os_id(spec.image)
            if os_id is not None:
                body["os_id"] = os_id
            else:
                body["image_id"] = spec.image
        reserved = sorted(set(spec.extra) & _RESERVED_FIELDS)
        unknown = sorted(set(spec.extra) - _EXTRA_FIELDS - _RESERVED_FIELDS)
        if reserved or unknown:
            bad = ", ".join(reserved + unknown)
            raise ProviderError(
                f"machine {spec.name}: vultr options not allowed here: {bad} "
                f"(allowed: {', '.join(sorted(_EXTRA_FIELDS))})",
                provider=self.name,
            )
        problems = [
            f"{name}: {problem}"
            for name, value in fields.items()
            if value and (problem := check_field(name, value)) is not None
        ] + check_options(spec.extra)
        if problems:
            raise ProviderError(f"machine {spec.name}: {'; '.join(problems)}", provider=self.name)
        body.update(spec.extra)
        if not any(k in body for k in _IMAGE_SOURCES):
            raise ProviderError(
                f"machine {spec.name}: no image: give a Vultr os_id (e.g. 2284) or an image_id",
                provider=self.name,
            )
        return body

    def _create_startup_script(self, scenario: str, machine: str, script: str) -> str:
        # create-startup-script: type boot runs once at first boot (pxe is for iPXE).
        name = f"{_SCRIPT_NAME_PREFIX}{scenario}/{machine}"
        attempt = 0
        while True:
            try:
                data = self._request(
                    "POST",
                    "/startup-scripts",
                    json={"name": name, "type": "boot", "script": _b64(script)},
                    idempotent=False,
                )
                break
            except _Ambiguous:
                # The script may exist although the answer got lost. Whatever carries
                # its name is deleted (never reused: an older one holds an older key),
                # then it is made again: one script per machine, none left over.
                for old in self._pages("/startup-scripts", "startup_scripts", {}):
                    if old.get("name") == name and old.get("id"):
                        self._delete(f"/startup-scripts/{_seg(str(old['id']))}")
                if attempt >= self.retry.server_error_retries:
                    raise
                self._sleep(self._backoff(attempt))
                attempt += 1
        try:
            return str(data["startup_script"]["id"])
        except (KeyError, TypeError):
            raise ProviderError(
                "Vultr created a startup script but did not say its id", provider=self.name
            ) from None

    def _create_instance(self, scenario: str, machine: str, body: dict[str, Any]) -> dict[str, Any]:
        attempt = 0
        while True:
            try:
                data = self._request("POST", "/instances", json=body, idempotent=False)
            except _Ambiguous:
                # The instance may exist although the answer got lost: look before retrying.
                found = [
                    i
                    for i in self._pages("/instances", "instances", {"tag": scenario_tag(scenario)})
                    if machine_tag(machine) in (i.get("tags") or [])
                ]
                if found:
                    return found[0]
                if attempt >= self.retry.server_error_retries:
                    raise
                self._sleep(self._backoff(attempt))
                attempt += 1
                continue
            except ProviderError as exc:
                if not exc.unsent or attempt == 0:
                    raise
                # This attempt never reached Vultr, but an earlier one, whose answer got
                # lost, may have made the instance: the create as a whole is ambiguous.
                raise ProviderError(
                    exc.message, code=exc.code, permanent=exc.permanent, **exc.details
                ) from None
            inst = data.get("instance")
            if not isinstance(inst, dict) or not inst.get("id"):
                raise ProviderError(
                    "Vultr accepted the instance but did not say its id", provider=self.name
                )
            return inst

    def _get_raw(self, instance_id: str) -> dict[str, Any] | None:
        data = self._request_or_none("GET", f"/instances/{_seg(instance_id)}")
        if data is None:
            return None
        inst = data.get("instance")
        if not isinstance(inst, dict):
            raise ProviderError(
                f"Vultr answered GET /instances/{instance_id} without an instance",
                provider=self.name,
            )
        return inst

    def _delete(self, path: str) -> None:
        self._request_or_none("DELETE", path)

    def _pages(self, path: str, key: str, params: dict[str, Any]) -> builtins.list[dict[str, Any]]:
        """All items of a cursor-paginated list (``meta.links.next``, Vultr "Meta and
        Pagination"); stops on an empty or repeated cursor, and fails past ``_MAX_PAGES``
        pages."""
        items: builtins.list[dict[str, Any]] = []
        cursor = ""
        seen: set[str] = set()
        for _ in range(_MAX_PAGES):
            query = {**params, "per_page": self.page_size}
            if cursor:
                query["cursor"] = cursor
            data = self._request("GET", path, params=query)
            items.extend(i for i in data.get(key) or [] if isinstance(i, dict))
            links = (data.get("meta") or {}).get("links") or {}
            cursor = str(links.get("next") or "")
            if not cursor or cursor in seen:
                return items
            seen.add(cursor)
        raise ProviderError(
            f"Vultr answered GET {path} with a next page after {_MAX_PAGES} pages "
            f"({len(items)} item(s) read): stopped there; is {self.base_url} the Vultr API?",
            provider=self.name,
        )

    def _backoff(self, attempt: int) -> float:
        full = min(self.retry.max_delay, self.retry.base_delay * (2.0**attempt))
        return full / 2 + self._rng.uniform(0, full / 2)

    def _retry_after(self, resp: httpx.Response) -> float | None:
        value = resp.headers.get("Retry-After")
        if not value:
            return None
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            seconds = when.timestamp() - time.time()
        return max(0.0, min(seconds, self.retry.max_delay))

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        idempotent: bool = True,
    ) -> dict[str, Any]:
        """One API call with retries: the JSON object answered (``{}`` for 204)."""
        data = self._send(method, path, json=json, params=params, idempotent=idempotent)
        assert data is not None  # _send answers None only when not_found_ok
        return data

    def _request_or_none(self, method: str, path: str) -> dict[str, Any] | None:
        """Like ``_request`` for GET/DELETE of one object, but ``None`` if it is gone."""
        return self._send(method, path, not_found_ok=True)

    def _send(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        idempotent: bool = True,
        not_found_ok: bool = False,
    ) -> dict[str, Any] | None:
        if method in ("GET", "DELETE"):
            idempotent = True
        url = self.base_url + path
        headers = {"Authorization": f"Bearer {self._key}", "Accept": "application/json"}
        limited = failed = 0
        while True:
            try:
                resp = self._client.request(method, url, json=json, params=params, headers=headers)
            except httpx.TransportError as exc:
                # A refused connection never reached Vultr: safe to retry even a POST.
                safe = idempotent or isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
                if safe and failed < self.retry.server_error_retries:
                    self._sleep(self._backoff(failed))
                    failed += 1
                    continue
                cls = ProviderError if safe else _Ambiguous
                raise cls(
                    f"cannot reach the Vultr API at {self.base_url} ({method} {path}): "
                    f"{exc or type(exc).__name__}; check the network or "
                    f"{API_URL_ENV}",
                    provider=self.name,
                    # A POST that never connected did nothing: its caller may say so.
                    unsent=safe and not idempotent,
                ) from None
            status = resp.status_code
            if status == 429:
                if limited >= self.retry.rate_limit_retries:
                    creating = (method, path) == ("POST", "/instances")
                    advice = ", or create fewer machines at once" if creating else " and try again"
                    raise ProviderError(
                        f"Vultr kept rate-limiting {method} {path} (HTTP 429) after "
                        f"{limited} retries: wait a minute{advice}",
                        provider=self.name,
                        status=status,
                        provider_error=_vultr_error(resp),
                        # Rate limited: Vultr did not carry the request out (its API
                        # doc, "429 Too Many Requests"), so a POST refused so made
                        # nothing. Earlier tries of this loop were 429s or never
                        # connected: none of them did anything either.
                        unsent=not idempotent,
                    )
                delay = self._retry_after(resp)
                self._sleep(self._backoff(limited) if delay is None else delay)
                limited += 1
                continue
            if status >= 500:
                if idempotent and failed < self.retry.server_error_retries:
                    self._sleep(self._backoff(failed))
                    failed += 1
                    continue
                cls = ProviderError if idempotent else _Ambiguous
                raise cls(
                    f"Vultr failed {method} {path} (HTTP {status}): "
                    f"{_vultr_error(resp)}; try again later (status.vultr.com)",
                    provider=self.name,
                    status=status,
                    provider_error=_vultr_error(resp),
                )
            if status == 404:
                if not_found_ok:
                    return None
                raise _client_error(resp, method, path)
            if status >= 400:
                raise _client_error(resp, method, path)
            if status == 204 or not resp.content:
                return {}
            try:
                data = resp.json()
            except ValueError:
                data = None
            if not isinstance(data, dict):
                raise ProviderError(
                    f"Vultr answered {method} {path} (HTTP {status}) with "
                    f"something that is not a JSON object; is {self.base_url} "
                    "the Vultr API?",
                    provider=self.name,
                    status=status,
                )
            return data


def _client_error(resp: httpx.Response, method: str, path: str) -> ProviderError:
    status, said = resp.status_code, _vultr_error(resp)
    if status == 401:
        msg = f"Vultr refused the API key (HTTP 401): check {API_KEY_ENV} ({said})"
    elif status == 403:
        msg = (
            f"Vultr forbade {method} {path} (HTTP 403): {said}; check the API key's "
            "access control (allowed IP addresses) in the Vultr portal"
        )
    else:
        msg = f"Vultr rejected {method} {path} (HTTP {status}): {said}"
    # A 4xx is Vultr's verdict on the request itself ("Response Codes" in openapi-v2.json:
    # an authorization failure or a malformed request): the same request fails again.
    # 429 never comes here (_send waits it out); 408 is a timeout, which may pass.
    return ProviderError(
        msg,
        provider=VultrProvider.name,
        permanent=status != 408,
        status=status,
        provider_error=said,
    )


def _vultr_error(resp: httpx.Response) -> str:
    """The ``error`` string of a Vultr error body, else the start of the body."""
    try:
        data = resp.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str) and data["error"]:
        return str(data["error"])
    text = resp.text.strip()
    return text[:200] if text else (resp.reason_phrase or "no details")


def _to_instance(raw: dict[str, Any]) -> Instance:
    # Fields: openapi-v2.json components.schemas.instance. server_status (none / locked /
    # installingbooting / ok) says whether the OS finished booting; absent counts as ok.
    tags = tuple(str(t) for t in raw.get("tags") or ())
    status = str(raw.get("status") or "")
    ready = (
        status == "active"
        and raw.get("power_status") == "running"
        and raw.get("server_status", "ok") == "ok"
    )
    password = raw.get("default_password")
    return Instance(
        id=str(raw["id"]),
        name=tag_value(tags, MACHINE_TAG_PREFIX) or str(raw.get("label") or raw["id"]),
        label=str(raw.get("label") or ""),
        status=status,
        ready=ready,
        main_ip=_ip(raw.get("main_ip")),
        private_ip=_ip(raw.get("internal_ip")),
        v6_main_ip=_ip6(raw),
        default_password=str(password) if password else None,
        tags=tags,
    )


def _ip(value: object) -> str | None:
    # A pending instance reports main_ip "0.0.0.0"; no VPC means internal_ip "".
    return str(value) if value and value != "0.0.0.0" else None


def _ip6(raw: dict[str, Any]) -> str | None:
    # Answers carry ``v6_main_ip`` (the examples of list-instances and get-instance; ""
    # without IPv6), the schema ``v6_networks[].main_ip``: either will do.
    nets = raw.get("v6_networks")
    found = [raw.get("v6_main_ip")]
    if isinstance(nets, list):
        found += [n.get("main_ip") for n in nets if isinstance(n, dict)]
    return next((str(v) for v in found if isinstance(v, str) and v and v != "::"), None)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _seg(value: str) -> str:
    """Quote an id for use as one path segment (an id never changes the path)."""
    return quote(value, safe="")
