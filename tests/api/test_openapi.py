"""The OpenAPI document (``/openapi.json``) against what the running API answers over HTTP.

The document is fetched from the real server, and each claim is checked with real requests:
no key (401), a key with too small a role (403), ids that do not exist (404), bad input (422),
Temporal down (503), the deal ETag (304), and what a pipeline body cannot go without.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import jsonschema
import pytest

from domain.pipeline import PipelineSpec
from tests.api.conftest import STAGES, Api, insert_deal

PROBLEM_JSON = "application/problem+json"
METHODS = ("get", "put", "post", "delete", "patch")

# The contract: every endpoint but these needs ``Authorization: Bearer <key>``.
PUBLIC = {"/healthz", "/readyz", "/metrics", "/v1/webhooks/{source_id}"}

# What each operation answers besides its success, read from the handlers (their ProblemError
# raises, the role dependency of api/auth.py, ctx.client()'s 503 while Temporal is not
# connected, api/temporal_errors.problem_from) — written down here independently of
# api/openapi.py. A new route needs a row (test_every_operation_declares_what_it_answers).
V, A = {401}, {401, 403}  # a viewer route (every key is at least a viewer), a higher one
PL = "/v1/pipelines/{pipeline_id}"
RAISES: dict[tuple[str, str], set[int]] = {
    ("get", "/healthz"): set(),
    ("get", "/readyz"): {503},
    ("get", "/metrics"): set(),
    ("post", "/v1/webhooks/{source_id}"): {200, 202, 400, 401, 403, 404, 413, 415, 422, 429, 503},
    ("get", "/v1/api-keys"): A,
    ("post", "/v1/api-keys"): A | {201, 422},
    ("delete", "/v1/api-keys/{key_id}"): A | {404},
    ("get", "/v1/sources"): A,
    ("post", "/v1/sources"): A | {201, 422},
    ("get", "/v1/sources/{source_id}"): A | {404},
    ("patch", "/v1/sources/{source_id}"): A | {404, 422},
    ("post", "/v1/sources/{source_id}/rotate-secret"): A | {404, 422},
    ("post", "/v1/sources/{source_id}/mapping:test"): A | {404, 422},
    ("get", "/v1/events"): V | {422},
    ("get", "/v1/events/{event_id}"): V | {404},
    ("get", "/v1/pipeline-templates"): V,
    ("get", "/v1/pipelines"): V,
    ("post", "/v1/pipelines"): A | {201, 422},
    ("get", PL): V | {404, 422},
    ("put", PL): A | {404, 409, 422},
    ("post", PL + "/stages:reorder"): A | {404, 409, 422},
    ("get", PL + "/versions"): V | {404},
    ("get", PL + "/versions/{version}"): V | {404, 422},
    ("get", PL + "/diff"): V | {404, 422},
    ("get", PL + "/audit"): V | {404},
    ("post", PL + "/activate"): A | {404, 409, 422},
    ("post", PL + "/simulate"): V | {404, 422},
    ("get", PL + "/metrics"): V | {404},
    ("post", PL + "/migrations"): A | {200, 202, 404, 409, 422, 503},
    ("get", "/v1/migrations"): V | {422},
    ("get", "/v1/migrations/{migration_id}"): V | {404},
    ("post", "/v1/migrations/{migration_id}/pause"): A | {202, 404, 409, 503},
    ("post", "/v1/migrations/{migration_id}/resume"): A | {202, 404, 409, 503},
    ("post", "/v1/migrations/{migration_id}/cancel"): A | {202, 404, 409, 503},
    ("get", "/v1/deals"): V | {422},
    ("get", "/v1/deals/{deal_id}"): V | {200, 304, 404},
    ("get", "/v1/deals/{deal_id}/history"): V | {404, 422},
    ("get", "/v1/deals/{deal_id}/tasks"): V | {404},
    # any key may try; _may_move and the workflow refuse with 403/409/422
    ("post", "/v1/deals/{deal_id}/transitions"): A | {200, 202, 404, 409, 422, 503},
    ("post", "/v1/deals/{deal_id}/snooze"): A | {404, 409, 422, 503},
    ("get", "/v1/approvals"): A | {422},
    ("get", "/v1/approvals/{approval_id}"): A | {404},
    ("post", "/v1/approvals/{approval_id}/decision"): A | {404, 409, 422, 503},
    ("get", "/v1/dead-letters"): V | {422},
    ("post", "/v1/dead-letters/replay"): A | {202, 422, 503},
    ("get", "/v1/dead-letters/replays/{replay_id}"): V | {404, 409, 503},
    ("get", "/v1/dead-letters/{event_id}"): V | {404},
    ("post", "/v1/dead-letters/{event_id}/replay"): A | {404, 409},
    ("post", "/v1/dead-letters/{event_id}/discard"): A | {404, 409, 422},
}

# Bodies and query strings that pass validation, so that a request gets as far as the key
# check, the role check and the lookup of its (missing) ids.
BODIES: dict[tuple[str, str], Any] = {
    ("post", "/v1/api-keys"): {"name": "openapi test", "role": "viewer", "subject": "nobody"},
    ("post", "/v1/sources"): {"name": "openapi test", "scheme": "hmac"},
    ("patch", "/v1/sources/{source_id}"): {},
    ("post", "/v1/sources/{source_id}/mapping:test"): {"payload": {}},
    ("put", PL): {
        "name": "P",
        "type": "sales",
        "currency": "USD",
        "probability_mode": "stage",
        "stages": STAGES,
    },
    ("post", PL + "/stages:reorder"): {"order": ["lead"]},
    ("post", PL + "/simulate"): {"deal": {"title": "A"}, "steps": []},
    ("post", PL + "/migrations"): {},
    ("post", "/v1/deals/{deal_id}/transitions"): {"to_stage": "qualified"},
    ("post", "/v1/deals/{deal_id}/snooze"): {"until": "2030-01-01T00:00:00Z"},
    ("post", "/v1/approvals/{approval_id}/decision"): {"decision": "approve"},
    ("post", "/v1/dead-letters/{event_id}/discard"): {"reason": "openapi test"},
    ("post", "/v1/webhooks/{source_id}"): {},
}
QUERIES: dict[tuple[str, str], dict[str, Any]] = {("get", PL + "/diff"): {"from": 1}}
# Creating things only to test the role check would leave them behind: those ops are only sent
# with keys that are refused before anything happens.
CREATES = {("post", "/v1/api-keys"), ("post", "/v1/sources"), ("post", "/v1/pipelines")}


def _doc(api: Api) -> dict[str, Any]:
    resp = api.http.get("/openapi.json")
    assert resp.status_code == 200
    return resp.json()


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


def _url(path: str) -> str:
    """``path`` with every path parameter an id that does not exist."""

    def missing(match: re.Match[str]) -> str:
        name = match.group(1)
        return (
            "1"
            if name == "version"
            else f"{name.removesuffix('_id')}_missing_{uuid.uuid4().hex[:6]}"
        )

    return re.sub(r"\{(\w+)\}", missing, path)


def _send(api: Api, method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    key = (method, path)
    if key in BODIES and "json" not in kw:
        kw["json"] = BODIES[key]
    if key in QUERIES:
        kw.setdefault("params", QUERIES[key])
    return api.http.request(method.upper(), _url(path), headers=headers, **kw)


def _problem_validator(doc: dict[str, Any], response: dict[str, Any]) -> jsonschema.Validator:
    """A validator for the schema a declared response gives ``application/problem+json``."""
    assert list(response["content"]) == [PROBLEM_JSON], response
    schema = response["content"][PROBLEM_JSON]["schema"]
    return jsonschema.Draft202012Validator({**schema, "components": doc["components"]})


def _assert_declared_problem(
    doc: dict[str, Any], method: str, path: str, resp: httpx.Response
) -> dict[str, Any]:
    """``resp`` is an error the document declares for the operation, in the declared shape."""
    status = str(resp.status_code)
    declared = doc["paths"][path][method]["responses"]
    assert status in declared, f"{method.upper()} {path} answered {status}, not declared"
    assert resp.headers["content-type"].split(";")[0] == PROBLEM_JSON, resp.headers
    body = resp.json()
    _problem_validator(doc, declared[status]).validate(body)
    assert body["status"] == resp.status_code
    for name in declared[status].get("headers", {}):
        assert name in resp.headers, f"{name} declared for {status} but not sent"
    return body


def _key(api: Api, role: str) -> str:
    resp = api.admin(
        "POST",
        "/v1/api-keys",
        json={"name": f"openapi {role}", "role": role, "subject": f"openapi-{role}"},
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["key"])


# --------------------------------------------------------------------------- the document


def test_document_is_well_formed(api: Api) -> None:
    doc = _doc(api)
    assert doc["openapi"].startswith("3.")
    try:
        from openapi_spec_validator import validate
    except ImportError:  # not installed in this venv: the structural checks below still run
        pass
    else:
        validate(doc)
    for name, schema in doc["components"]["schemas"].items():
        assert isinstance(schema, dict), name
        jsonschema.Draft202012Validator.check_schema(schema)
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[-1] in doc["components"]["schemas"], ref
    ids = [op["operationId"] for _, _, op in _operations(doc)]
    assert len(ids) == len(set(ids))
    for name in ("HTTPValidationError", "ValidationError"):
        assert name not in doc["components"]["schemas"]
        assert f"#/components/schemas/{name}" not in refs


def test_every_error_response_is_a_problem_document(api: Api) -> None:
    doc = _doc(api)
    problem = doc["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail"}
    assert {"instance", "errors"} <= set(problem["properties"])
    errors = 0
    for method, path, op in _operations(doc):
        for status, response in op["responses"].items():
            if status[0] in "45":
                errors += 1
                schema = response["content"][PROBLEM_JSON]["schema"]
                assert list(response["content"]) == [PROBLEM_JSON], (method, path, status)
                assert schema == {"$ref": "#/components/schemas/Problem"}, (method, path, status)
    assert errors > 150


def test_security_is_absent_exactly_on_the_public_paths(api: Api) -> None:
    doc = _doc(api)
    ((name, scheme),) = doc["components"]["securitySchemes"].items()
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert "security" not in doc  # declared per operation
    for method, path, op in _operations(doc):
        if path in PUBLIC:
            assert "security" not in op, (method, path)
            assert "x-dealflow-role" not in op
        else:
            assert op["security"] == [{name: []}], (method, path)
            assert op["x-dealflow-role"] in ("viewer", "approver", "admin")
            assert op["x-dealflow-role"] in op["description"]
    assert {path for _, path, _ in _operations(doc)} >= PUBLIC


def test_every_operation_declares_what_it_answers(api: Api) -> None:
    doc = _doc(api)
    ops = {(method, path): op for method, path, op in _operations(doc)}
    assert set(ops) == set(RAISES), set(ops) ^ set(RAISES)
    for key, op in ops.items():
        declared = {int(s) for s in op["responses"]}
        assert RAISES[key] <= declared, (key, RAISES[key] - declared)
        if "{" in key[1]:
            assert 404 in declared, key
        # 403 only where something can refuse a valid key (not on viewer-only routes)
        assert (403 in declared) == (403 in RAISES[key]), key


def test_the_reviewed_operations(api: Api) -> None:
    """What the outside review found missing."""
    doc = _doc(api)

    def statuses(method: str, path: str) -> set[str]:
        return set(doc["paths"][path][method]["responses"])

    assert "503" in statuses("get", "/readyz")
    deal = doc["paths"]["/v1/deals/{deal_id}"]["get"]
    assert {"200", "304", "404"} <= set(deal["responses"])
    assert "ETag" in deal["responses"]["200"]["headers"]
    assert "ETag" in deal["responses"]["304"]["headers"]
    assert "content" not in deal["responses"]["304"]
    assert any(p["name"] == "If-None-Match" and p["in"] == "header" for p in deal["parameters"])
    assert {"200", "403", "404", "409", "422"} <= statuses(
        "post", "/v1/approvals/{approval_id}/decision"
    )
    assert "409" in statuses("post", "/v1/deals/{deal_id}/snooze")
    assert {"200", "202", "409", "422"} <= statuses("post", "/v1/deals/{deal_id}/transitions")


# --------------------------------------------------------------------------- real requests


def test_no_key_or_a_bad_key_gets_the_declared_401(api: Api) -> None:
    doc = _doc(api)
    checked = 0
    for method, path, op in _operations(doc):
        if "security" not in op:
            continue
        for token in (None, "dfk_not_a_key"):
            resp = _send(api, method, path, token)
            assert resp.status_code == 401, (method, path, resp.text)
            body = _assert_declared_problem(doc, method, path, resp)
            assert "Bearer" in resp.headers["www-authenticate"]
            assert body["instance"] == resp.request.url.path
        checked += 1
    assert checked == len(RAISES) - len([k for k in RAISES if k[1] in PUBLIC])


def test_public_paths_answer_without_a_key(api: Api) -> None:
    doc = _doc(api)
    for method, path, _ in _operations(doc):
        if path in PUBLIC:
            resp = _send(api, method, path)
            assert resp.status_code != 401, (method, path)
            assert str(resp.status_code) in doc["paths"][path][method]["responses"]


@pytest.mark.parametrize("role", ["viewer", "approver"])
def test_the_declared_role_is_the_one_enforced(api: Api, role: str) -> None:
    """A key below the declared role gets the declared 403; a key with it is not refused."""
    doc = _doc(api)
    token = _key(api, role)
    rank = {"viewer": 0, "approver": 1, "admin": 2}
    for method, path, op in _operations(doc):
        needed = op.get("x-dealflow-role")
        if needed is None:
            continue
        if rank[role] >= rank[needed] and (method, path) in CREATES:
            continue
        resp = _send(api, method, path, token)
        if rank[role] < rank[needed]:
            assert resp.status_code == 403, (method, path, resp.status_code, resp.text)
            body = _assert_declared_problem(doc, method, path, resp)
            assert needed in body["detail"]
        else:
            assert resp.status_code not in (401, 403), (method, path, resp.text)
            assert str(resp.status_code) in op["responses"], (method, path, resp.status_code)


def test_ids_that_do_not_exist_get_the_declared_404(api: Api) -> None:
    doc = _doc(api)
    checked = 0
    for method, path, op in _operations(doc):
        if not any(p["in"] == "path" for p in op.get("parameters", [])):
            continue
        resp = _send(api, method, path, api.settings.admin_token)
        if resp.status_code == 404:
            _assert_declared_problem(doc, method, path, resp)
            checked += 1
        else:
            raise AssertionError(f"{method.upper()} {path}: {resp.status_code} {resp.text}")
    assert checked == len([k for k in RAISES if "{" in k[1]])


BAD: list[tuple[str, str, dict[str, Any], str]] = [
    # (method, path, request, a loc the answer names)
    ("post", "/v1/api-keys", {"json": {"name": "", "role": "boss"}}, "role"),
    ("get", "/v1/events", {"params": {"limit": 0}}, "limit"),
    ("get", "/v1/deals", {"params": {"external_id": "no colon"}}, "external_id"),
    ("post", "/v1/pipelines", {"json": {"name": "no stages"}}, "stages"),
    ("post", "/v1/sources", {"json": {"name": "s", "scheme": "standard", "secret": "x"}}, "secret"),
    (
        "post",
        "/v1/sources",
        {"content": b"{not json", "headers": {"content-type": "application/json"}},
        "body",
    ),
    ("post", "/v1/deals/{deal_id}/transitions", {"json": {"to_stage": ""}}, "to_stage"),
    ("post", "/v1/dead-letters/replay", {"json": {"batch": 0}}, "batch"),
]


@pytest.mark.parametrize(
    ("method", "path", "request_kw", "loc"), BAD, ids=[f"{m} {p} {where}" for m, p, _, where in BAD]
)
def test_bad_input_gets_the_declared_422_problem(
    api: Api, method: str, path: str, request_kw: dict[str, Any], loc: str
) -> None:
    doc = _doc(api)
    request_kw = dict(request_kw)  # the parameters are shared by both database backends
    headers = {
        "Authorization": f"Bearer {api.settings.admin_token}",
        **request_kw.pop("headers", {}),
    }
    resp = api.http.request(method.upper(), _url(path), headers=headers, **request_kw)
    assert resp.status_code == 422, resp.text
    body = _assert_declared_problem(doc, method, path, resp)
    assert body["errors"], body
    assert any(loc in e["loc"] for e in body["errors"]), body["errors"]


def test_temporal_down_gets_the_declared_503(api: Api) -> None:
    """The ``api`` fixture's Temporal address is an unused port: never connected."""
    doc = _doc(api)
    resp = api.http.get("/readyz")
    assert resp.status_code == 503
    body = _assert_declared_problem(doc, "get", "/readyz", resp)
    assert body["checks"]["temporal"] != "ok"
    for method, path, kw in (
        ("post", "/v1/dead-letters/replay", {"json": {}}),
        ("get", "/v1/dead-letters/replays/{replay_id}", {}),
    ):
        url = _url(path).replace("replay_missing", "replay-missing")
        resp = api.admin(method.upper(), url, **kw)
        assert resp.status_code == 503, resp.text
        _assert_declared_problem(doc, method, path, resp)
        assert int(resp.headers["retry-after"]) > 0


def test_deal_etag_and_304_are_as_declared(api: Api) -> None:
    doc = _doc(api)
    op = doc["paths"]["/v1/deals/{deal_id}"]["get"]
    deal_id = f"deal_openapi_{uuid.uuid4().hex[:8]}"
    insert_deal(api.db, deal_id, "pl_openapi")
    first = api.admin("GET", f"/v1/deals/{deal_id}")
    assert first.status_code == 200, first.text
    assert first.headers["content-type"].split(";")[0] in op["responses"]["200"]["content"]
    for name in op["responses"]["200"]["headers"]:
        assert name in first.headers
    etag = first.headers["etag"]
    again = api.admin("GET", f"/v1/deals/{deal_id}", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert "304" in op["responses"]
    assert again.headers["etag"] == etag and not again.content


# --------------------------------------------------------------------------- pipeline bodies


def _pipeline_schema(doc: dict[str, Any], method: str, path: str) -> jsonschema.Validator:
    content = doc["paths"][path][method]["requestBody"]["content"]["application/json"]
    return jsonschema.Draft202012Validator({**content["schema"], "components": doc["components"]})


def test_pipeline_bodies_require_what_the_server_requires(api: Api) -> None:
    """For bodies that differ in what they leave out, the documented schema accepts exactly
    the ones the server accepts (201), and refuses the ones it refuses (422)."""
    doc = _doc(api)
    full = {
        "name": f"openapi {uuid.uuid4().hex[:6]}",
        "type": "sales",
        "currency": "USD",
        "probability_mode": "stage",
        "stages": STAGES,
    }
    template = api.admin("GET", "/v1/pipeline-templates").json()["data"][0]["key"]
    bodies = {
        "full": full,
        "no stages": {k: v for k, v in full.items() if k != "stages"},
        "empty stages": {**full, "stages": []},
        "template, no stages": {
            **{k: v for k, v in full.items() if k != "stages"},
            "template": template,
        },
        "template only": {"name": full["name"], "template": template, "currency": "USD"},
        "null template, no stages": {
            **{k: v for k, v in full.items() if k != "stages"},
            "template": None,
        },
        **{
            f"no {member}": {k: v for k, v in full.items() if k != member}
            for member in ("name", "type", "currency", "probability_mode")
        },
    }
    validator = _pipeline_schema(doc, "post", "/v1/pipelines")
    for what, body in bodies.items():
        resp = api.admin("POST", "/v1/pipelines", json=body)
        assert resp.status_code in (201, 422), resp.text
        documented = validator.is_valid(body)
        assert documented == (resp.status_code == 201), (what, resp.status_code, resp.text)
    # The model's own requirements are the document's (none dropped by the post-processing).
    schema = doc["paths"]["/v1/pipelines"]["post"]["requestBody"]["content"]["application/json"]
    declared = set(schema["schema"].get("required", []))
    for branch in schema["schema"].get("anyOf", []):
        if "template" not in branch.get("required", []):
            declared |= set(branch["required"])
    assert set(PipelineSpec.model_json_schema().get("required", [])) <= declared
    assert _pipeline_schema(doc, "put", PL).schema == validator.schema


def test_the_source_patch_body_documents_which_members_may_be_null(api: Api) -> None:
    """null clears rate_limit, tolerance and mapping; name, enabled and ip_allowlist refuse it."""
    props = _doc(api)["components"]["schemas"]["SourcePatch"]["properties"]

    def nullable(member: str) -> bool:
        schema = props[member]
        return schema.get("type") == "null" or any(
            s.get("type") == "null" for s in schema.get("anyOf", [])
        )

    assert {m for m in props if nullable(m)} == {"rate_limit", "tolerance", "mapping"}
    src = api.create_source("hmac")
    for member in ("name", "enabled", "ip_allowlist"):
        resp = api.admin("PATCH", f"/v1/sources/{src['id']}", json={member: None})
        assert resp.status_code == 422, resp.text
    cleared = api.admin("PATCH", f"/v1/sources/{src['id']}", json={"rate_limit": None})
    assert cleared.status_code == 200, cleared.text
