"""Every operation of the served OpenAPI document, fuzzed by schemathesis against a real
server over TLS, once with a master token and once with a machine credential: no 5xx,
and every answer (status, content type, body) is one the document declares.

Bounded (``MAX_EXAMPLES`` per operation) so that it runs in a minute or two; the longer
run is ``bench/fuzz_api.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from wire_helpers import pinned_http

from cloudremotecontrol.master.client import Client
from cloudremotecontrol.master.localrun import AgentProcess, ServerProcess

MAX_EXAMPLES = int(os.environ.get("CRC_FUZZ_EXAMPLES", "12"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


class Api:
    def __init__(self, tmp: Path) -> None:
        self.server = ServerProcess(tmp / "srv").start()
        self.token = self.server.add_user("alice")
        self.client = Client(self.server.url, self.token, self.server.fingerprint)
        key = self.client.create_group("lab", ["a", "b"])["machines"][0]["key"]
        self.agent = AgentProcess(tmp / "a", self.server.url, key, self.server.fingerprint).start()
        deadline = time.monotonic() + 60
        while self.client.group("lab")["machines"][0]["state"] != "ready":
            assert time.monotonic() < deadline, self.agent.log()
            time.sleep(0.1)
        job = self.client.start_job("lab", "a", argv=["echo", "fuzzed"])
        self.job_id = job["job_id"]
        cred_file = tmp / "a" / "credential.json"
        self.credential = json.loads(cred_file.read_text())["credential"]
        self.cert = str(self.server.data_dir / "cert.pem")

    def close(self) -> None:
        self.client.close()
        self.agent.stop()
        self.server.stop()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    a = Api(tmp_path_factory.mktemp("fuzz"))
    yield a
    a.close()
    assert "Traceback" not in a.server.log_path.read_text()


def _run_operation(op: Any, api: Api, counts: dict[str, int]) -> None:
    strategies = [
        op.as_strategy(GenerationMode.POSITIVE),
        op.as_strategy(GenerationMode.NEGATIVE),
    ]
    # Reads (and key/value writes) of what exists, not only of random names; nothing
    # that deletes the group or runs generated commands on the machine.
    known = {"group": "lab", "job_id": api.job_id}
    names = re.findall(r"\{(\w+)\}", op.path)
    if (
        names
        and set(names) <= set(known)
        and (op.method.upper() in ("GET", "HEAD") or "/kv/" in op.path)
    ):
        strategies.append(
            op.as_strategy(GenerationMode.POSITIVE, path_parameters={n: known[n] for n in names})
        )
    strategy = st.one_of(*strategies)

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=os.environ.get("CRC_FUZZ_SEED") is None,
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        # Long polls are bounded here (their waiting is tested elsewhere); everything
        # else is sent as generated.
        if isinstance(case.query, dict):
            if "wait" in case.query:
                case.query["wait"] = 0
            if "follow" in case.query:
                case.query["follow"] = False
        for token in (api.token, api.credential):
            headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}
            response = case.call_and_validate(
                headers=headers, verify=api.cert, timeout=30, checks=CHECKS
            )
            counts[str(response.status_code)] = counts.get(str(response.status_code), 0) + 1

    run()


def _describe(exc: BaseException) -> str:
    """An exception and, for a group (hypothesis's FlakyFailure too), what it holds."""
    text = f"{type(exc).__name__}: {exc}"
    for sub in getattr(exc, "exceptions", ()):
        text += "\n  " + _describe(sub).replace("\n", "\n  ")
    return text


def test_every_operation_answers_as_documented_for_master_and_machine(api: Api) -> None:
    schema = schemathesis.openapi.from_url(api.server.url + "/v1/openapi.json", verify=api.cert)
    failures: dict[str, str] = {}
    report: dict[str, dict[str, int]] = {}
    for result in schema.get_all_operations():
        op = result.ok()
        counts: dict[str, int] = {}
        try:
            _run_operation(op, api, counts)
        except BaseException as exc:  # schemathesis raises a BaseExceptionGroup
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            failures[op.label] = _describe(exc)[:4000]
        report[op.label] = counts
    if os.environ.get("CRC_FUZZ_REPORT"):
        Path(os.environ["CRC_FUZZ_REPORT"]).write_text(
            json.dumps({"operations": report, "failures": failures}, indent=1)
        )
    assert len(report) >= 30, sorted(report)
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    statuses = {code for counts in report.values() for code in counts}
    assert not {c for c in statuses if c.startswith("5")}, report


def test_every_operation_declares_its_errors_with_the_error_shape(api: Api) -> None:
    with pinned_http(api.server) as http:
        doc = http.get("/v1/openapi.json").json()
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    error = {"$ref": "#/components/schemas/Error"}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            codes = set(op["responses"])
            assert "422" not in codes, (method, path)
            assert {"413", "431", "503"} <= codes, (method, path, codes)
            if op.get("parameters") or "requestBody" in op:
                assert "400" in codes, (method, path, codes)
            for code in codes - {"200", "201", "206"}:
                schema = op["responses"][code]["content"]["application/json"]["schema"]
                assert schema == error, (method, path, code)
    enroll = doc["paths"]["/v1/agent/enroll"]["post"]["responses"]
    assert {"401", "429"} <= set(enroll)
    master = doc["paths"]["/v1/groups/{group}"]["delete"]["responses"]
    assert {"401", "403", "404", "409"} <= set(master)
    # The errors only some operations answer are declared on them, named by their code.
    own = {
        ("/v1/blobs/{sha256}", "get", "416"): "range_not_satisfiable",
        ("/v1/agent/blobs/{sha256}", "get", "416"): "range_not_satisfiable",
        ("/v1/blobs/{sha256}", "put", "400"): "hash_mismatch",
        ("/v1/agent/uploads/{job_id}", "put", "400"): "hash_mismatch",
        ("/v1/groups/{group}/kv/{key}", "get", "404"): "timeout",
        ("/v1/agent/kv/{key}", "get", "404"): "timeout",
    }
    for (path, method, code), name in own.items():
        answer = doc["paths"][path][method]["responses"][code]
        assert f"({name})" in answer["description"] or f", {name})" in answer["description"]
        assert answer["content"] == {"application/json": {"schema": error}}, (path, code)


def test_an_operations_own_errors_are_answered_as_declared(api: Api) -> None:
    """A range past a file's end, and a body whose hash is not the path's: the status
    and code the operation declares, in the error shape."""
    auth = {"Authorization": f"Bearer {api.token}"}
    with pinned_http(api.server) as http:
        doc = http.get("/v1/openapi.json").json()["paths"]["/v1/blobs/{sha256}"]
        body = b"twelve bytes"
        sha = hashlib.sha256(body).hexdigest()
        assert http.put(f"/v1/blobs/{sha}", content=body, headers=auth).status_code == 200
        wrong = http.put(f"/v1/blobs/{'0' * 64}", content=body, headers=auth)
        past = http.get(f"/v1/blobs/{sha}", headers={**auth, "Range": "bytes=12-"})
    for resp, method, status, code in (
        (wrong, "put", 400, "hash_mismatch"),
        (past, "get", 416, "range_not_satisfiable"),
    ):
        assert resp.status_code == status, resp.text
        assert resp.json()["error"]["code"] == code, resp.text
        assert code in doc[method]["responses"][str(status)]["description"]
