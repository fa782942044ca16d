"""The OpenAPI document, made to say what the API really does.

FastAPI's generated document knows the routes, their parameters and their bodies, but not how
the app answers: every error is an RFC 9457 problem document (``api/problems.py``), keys are
checked by a dependency (``api/auth.py``) and many statuses are raised from inside handlers.
``build_openapi`` generates the document once and post-processes it:

1. a ``Problem`` schema; every 4xx/5xx response (FastAPI's generated 422 too) is
   ``application/problem+json`` with it; ``HTTPValidationError``/``ValidationError`` go when
   nothing refers to them any more;
2. an HTTP bearer scheme, and ``security`` on every operation whose route depends on
   ``authenticate`` (found in the route's dependencies, not listed by path), with 401, and 403
   where the role the route needs (``x-dealflow-role``) is more than every key has;
3. 404 on operations with path parameters, and the statuses handlers raise (``EXTRA``);
4. what ``POST``/``PUT /v1/pipelines`` really requires (derived from the pipeline model, the
   templates and the validator, see ``pipeline_body_requirements``).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, routing
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from api.auth import RANK, authenticate, require

PROBLEM_JSON = "application/problem+json"
PROBLEM_REF = "#/components/schemas/Problem"
BEARER = "bearerAuth"

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "An RFC 9457 problem document: the body of every error answer.",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {
            "type": "string",
            "format": "uri-reference",
            "description": "The kind of problem, e.g. https://dealflow.dev/problems/not-found",
        },
        "title": {"type": "string", "description": "A short summary of the kind of problem"},
        "status": {"type": "integer", "minimum": 100, "maximum": 599},
        "detail": {"type": "string", "description": "What went wrong this time, for people"},
        "instance": {"type": "string", "description": "The path of the request"},
        "errors": {
            "type": "array",
            "description": "Each thing that is wrong, when several are",
            "items": {
                "type": "object",
                "required": ["loc", "msg"],
                "properties": {
                    "loc": {
                        "type": "array",
                        "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                        "description": 'Where, e.g. ["body", "stages", 2, "key"]',
                    },
                    "msg": {"type": "string"},
                    "code": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                },
            },
        },
    },
    "additionalProperties": True,
}

DESCRIPTIONS = {
    304: "Not modified: the deal still has the ETag sent in If-None-Match",
    400: "Bad request",
    401: "No valid API key: 'Authorization: Bearer <key>' is missing, unknown or revoked",
    403: "The key's role (or subject) is not allowed to do this",
    404: "Not found",
    409: "Conflict with the current state",
    422: "The request is invalid; errors lists each problem",
    503: "A service this needs is not reachable; retry after Retry-After",
}

RETRY_AFTER = {
    "description": "Seconds to wait before retrying",
    "schema": {"type": "integer"},
}
ETAG = {
    "description": "The deal's version; send it in If-None-Match to get a 304 while it holds",
    "schema": {"type": "string"},
}

# Statuses handlers answer beyond 401/403 (from the key check), 404 (a path id) and FastAPI's
# 422 (parameters and bodies): from the ProblemError raises in api/routes/*.py, ctx.client()
# (503 while Temporal is not connected) and api/temporal_errors.problem_from (403/404/409/422,
# 503 when Temporal does not answer). A ``None`` description takes the one in DESCRIPTIONS.
_TEMPORAL = {503: "Temporal is not reachable; retry after Retry-After"}
_SIGNAL = {409: "The migration has finished; it cannot change", **_TEMPORAL}
EXTRA: dict[tuple[str, str], dict[int, str | None]] = {
    ("get", "/readyz"): {503: "Not ready: the database or Temporal is not reachable"},
    ("post", "/v1/webhooks/{source_id}"): {400: "Content-Length is not a number"},
    ("get", "/v1/deals/{deal_id}"): {304: None},
    ("post", "/v1/deals/{deal_id}/transitions"): {
        202: "Held for approval: {approval_id, status: pending_approval}",
        403: "The key may not move deals of this pipeline, or not this way",
        409: "The pipeline's rules refuse the move, or the deal is closed",
        422: "The move is invalid (e.g. required fields missing); errors lists each",
        **_TEMPORAL,
    },
    ("post", "/v1/deals/{deal_id}/snooze"): {
        409: "The deal cannot be snoozed now (e.g. it is closed)",
        **_TEMPORAL,
    },
    ("post", "/v1/approvals/{approval_id}/decision"): {
        403: "The key's subject is not an approver of this approval",
        409: "The approval is already decided or withdrawn",
        **_TEMPORAL,
    },
    ("put", "/v1/pipelines/{pipeline_id}"): {409: "Another change was saved at the same time"},
    ("post", "/v1/pipelines/{pipeline_id}/activate"): {
        409: "A future go_live_at on the version that is already live (PUT a new version first)"
    },
    ("post", "/v1/pipelines/{pipeline_id}/stages:reorder"): {
        409: "The pipeline changed while this was being made"
    },
    ("post", "/v1/pipelines/{pipeline_id}/migrations"): {
        409: "Another migration of this pipeline is still running",
        **_TEMPORAL,
    },
    ("post", "/v1/migrations/{migration_id}/pause"): _SIGNAL,
    ("post", "/v1/migrations/{migration_id}/resume"): _SIGNAL,
    ("post", "/v1/migrations/{migration_id}/cancel"): _SIGNAL,
    ("post", "/v1/dead-letters/replay"): _TEMPORAL,
    ("get", "/v1/dead-letters/replays/{replay_id}"): {
        409: "The replay ended without completing (cancelled, failed, terminated)",
        **_TEMPORAL,
    },
    ("post", "/v1/dead-letters/{event_id}/replay"): {409: "The event is not dead-lettered"},
    ("post", "/v1/dead-letters/{event_id}/discard"): {409: "The event is not dead-lettered"},
}

# Response headers (status -> header -> object) beyond Retry-After on every 503 and
# WWW-Authenticate on every 401.
HEADERS: dict[tuple[str, str], dict[int, dict[str, Any]]] = {
    ("get", "/v1/deals/{deal_id}"): {200: {"ETag": ETAG}, 304: {"ETag": ETAG}},
    ("post", "/v1/deals/{deal_id}/transitions"): {200: {"ETag": ETAG}},
    ("post", "/v1/pipelines/{pipeline_id}/migrations"): {
        202: {"Location": {"description": "The migration", "schema": {"type": "string"}}}
    },
    ("post", "/v1/webhooks/{source_id}"): {429: {"Retry-After": RETRY_AFTER}},
}

# Request parameters the handlers read themselves (not FastAPI parameters).
PARAMETERS: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("get", "/v1/deals/{deal_id}"): [
        {
            "name": "If-None-Match",
            "in": "header",
            "required": False,
            "description": "ETags of the deal the client has: 304 if one still holds",
            "schema": {"type": "string"},
        }
    ],
}

# Operations whose body is a pipeline (``api.routes.pipelines._spec_or_422``).
PIPELINE_BODIES = (("post", "/v1/pipelines"), ("put", "/v1/pipelines/{pipeline_id}"))
# Values for members of a pipeline that the templates do not fill in (to make a sample that
# the server accepts; see ``pipeline_body_requirements``).
_SAMPLE_EXTRAS = {"type": "sales", "currency": "USD", "probability_mode": "stage"}


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document (built once, then cached on ``app.openapi_schema``)."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = FastAPI.openapi(app)  # FastAPI's own document (the instance's openapi is this)
    app.openapi_schema = postprocess(doc, access_of(app))
    return app.openapi_schema


# --------------------------------------------------------------------------- who may call


def _calls(dependant: Dependant) -> Iterator[Any]:
    for dep in dependant.dependencies:
        if dep.call is not None:
            yield dep.call
        yield from _calls(dep)


_REQUIRE_CODE = require("viewer").__code__


def _api_routes(app: FastAPI) -> Iterator[Any]:
    """The app's API routes as ``get_openapi`` sees them (with their full paths: newer
    FastAPI versions keep included routers nested, older ones flatten them into ``app.routes``)."""
    contexts = getattr(routing, "iter_route_contexts", None)
    if contexts is None:
        yield from (r for r in app.routes if isinstance(r, APIRoute))
        return
    for context in contexts(app.routes):
        if isinstance(context.original_route, APIRoute):
            yield context


def access_of(app: FastAPI) -> dict[tuple[str, str], str | None]:
    """``(method, path) -> role`` for every route that checks a key: the least role it lets in
    (``"viewer"`` when it only authenticates); ``None`` for a route that checks none."""
    out: dict[tuple[str, str], str | None] = {}
    for route in _api_routes(app):
        role: str | None = None
        for call in _calls(route.dependant):
            if call is authenticate and role is None:
                role = "viewer"
            elif getattr(call, "__code__", None) is _REQUIRE_CODE:
                needed = inspect.getclosurevars(call).nonlocals["role"]
                if role is None or RANK[needed] > RANK[role]:
                    role = needed
        for method in route.methods:
            out[(method.lower(), route.path_format)] = role
    return out


# --------------------------------------------------------------------------- post-processing


# FastAPI's own descriptions of statuses declared as ``responses={409: {}}``.
_GENERIC = ("Conflict", "Unprocessable Entity", "Validation Error", "Successful Response")


def _description(status: int, given: str | None = None) -> str:
    return given or DESCRIPTIONS.get(status) or "Error"


def _add(responses: dict[str, Any], status: int, description: str | None = None) -> None:
    key = str(status)
    if key not in responses:
        responses[key] = {"description": _description(status, description)}
    elif description and responses[key].get("description") in (None, "", *_GENERIC):
        responses[key]["description"] = description


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            if method in ("get", "put", "post", "delete", "patch", "head", "options", "trace"):
                yield method, path, op


def postprocess(doc: dict[str, Any], access: dict[tuple[str, str], str | None]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Problem"] = copy.deepcopy(PROBLEM_SCHEMA)
    components.setdefault("securitySchemes", {})[BEARER] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key: 'Authorization: Bearer <key>'. A key has one role: "
        "admin, approver or viewer (admin > approver > viewer).",
    }
    required = pipeline_body_requirements()
    for method, path, op in _operations(doc):
        responses = op.setdefault("responses", {})
        role = access.get((method, path))
        if role is not None:
            op["security"] = [{BEARER: []}]
            op["x-dealflow-role"] = role
            note = f"Needs a key with the `{role}` role (or a higher one)."
            op["description"] = f"{op['description']}\n\n{note}" if op.get("description") else note
            _add(responses, 401)
            if RANK[role] > RANK["viewer"]:
                _add(responses, 403, f"The key's role is not enough: this needs '{role}'")
        else:
            op.pop("security", None)
        if any(p.get("in") == "path" for p in op.get("parameters", [])):
            _add(responses, 404)
        if "requestBody" in op:  # api/body_limit.py (the webhook route declares its own)
            _add(responses, 413, "The body is over DEALFLOW_MAX_BODY_BYTES (1 MiB by default)")
        for status, description in EXTRA.get((method, path), {}).items():
            _add(responses, status, description)
        for parameter in PARAMETERS.get((method, path), []):
            op.setdefault("parameters", []).append(copy.deepcopy(parameter))
        for status, headers in HEADERS.get((method, path), {}).items():
            responses[str(status)].setdefault("headers", {}).update(copy.deepcopy(headers))
        for key, response in responses.items():
            status = int(key) if key.isdigit() else 0
            if 400 <= status < 600:
                content = {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_REF}}}
                description = response.get("description")
                if description in (None, "", *_GENERIC):
                    description = _description(status)
                response.update(description=description, content=content)
                if status == 401:
                    response.setdefault("headers", {})["WWW-Authenticate"] = {
                        "description": 'Bearer realm="dealflow"',
                        "schema": {"type": "string"},
                    }
                if status == 503:
                    response.setdefault("headers", {})["Retry-After"] = RETRY_AFTER
            elif status == 304:
                response.pop("content", None)
        op["responses"] = dict(sorted(responses.items()))
        if (method, path) in PIPELINE_BODIES:
            _require_pipeline_members(op, *required)
    for name in ("HTTPValidationError", "ValidationError"):
        if name in schemas and not _referenced(doc, f"#/components/schemas/{name}"):
            del schemas[name]
    return doc


def _referenced(node: Any, ref: str) -> bool:
    if isinstance(node, dict):
        return node.get("$ref") == ref or any(_referenced(v, ref) for v in node.values())
    if isinstance(node, list):
        return any(_referenced(v, ref) for v in node)
    return False


# --------------------------------------------------------------------------- pipeline bodies


def pipeline_body_requirements() -> tuple[list[str], list[str], list[str]]:
    """What a pipeline body (``POST``/``PUT /v1/pipelines``) cannot go without, found by asking
    the server's own code rather than listed here: ``(always, without_template, non_empty)``.

    From a sample the server accepts (a template filled in), each top-level member is left out
    in turn and the body is run through what the route runs (``apply_template``, then
    ``parse_and_validate``). A member whose absence is a problem at that member is required:
    ``always`` when it is so with ``template`` set too, ``without_template`` when only without
    one (the template fills it in). ``non_empty``: lists that may not be empty without a
    template (``stages``). The model's own ``required`` (``PipelineSpec``) shows up here too, so
    a member made required there needs no change in this module.
    """
    from domain.templates import TEMPLATES, apply_template
    from domain.validation import parse_and_validate

    def refused(payload: dict[str, Any], member: str) -> bool:
        filled, problems = apply_template(payload)
        _, more = parse_and_validate(filled)
        return any(list(p.loc[:1]) == [member] for p in problems + more)

    template = next(iter(TEMPLATES))
    with_template: dict[str, Any] = {"name": "Sample", "template": template, **_SAMPLE_EXTRAS}
    expanded, _ = apply_template(dict(with_template))
    expanded.pop("template", None)
    if parse_and_validate(expanded)[1] or parse_and_validate(apply_template(with_template)[0])[1]:
        return ["name"], [], []  # no valid sample: keep what the model says
    always, without_template, non_empty = [], [], []
    for member, value in expanded.items():
        less = {k: v for k, v in expanded.items() if k != member}
        if refused(less, member):
            if member in with_template and refused(
                {k: v for k, v in with_template.items() if k != member}, member
            ):
                always.append(member)
            else:
                without_template.append(member)
        if isinstance(value, list) and value and refused({**expanded, member: []}, member):
            non_empty.append(member)
    return always, without_template, non_empty


def _require_pipeline_members(
    op: dict[str, Any], always: list[str], without_template: list[str], non_empty: list[str]
) -> None:
    content = op.get("requestBody", {}).get("content", {}).get("application/json", {})
    schema = content.get("schema")
    if not isinstance(schema, dict) or "properties" not in schema:
        return
    names = [n for n in schema["properties"] if n in always]
    schema["required"] = names + [n for n in always if n not in names]
    branch: dict[str, Any] = {"required": without_template}
    if non_empty:
        branch["properties"] = {n: {"type": "array", "minItems": 1} for n in non_empty}
    if without_template or non_empty:
        schema["anyOf"] = [
            {"required": ["template"], "properties": {"template": {"type": "string"}}},
            branch,
        ]
        need = [f"`{n}`" + (" (at least one)" if n in non_empty else "") for n in without_template]
        need += [f"`{n}` at least one" for n in non_empty if n not in without_template]
        note = f"Without `template`: {', '.join(need)}; a template fills these in."
        schema["description"] = f"{schema.get('description', '').rstrip()}\n\n{note}".strip()
