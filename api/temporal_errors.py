"""Turning Temporal update failures into problem documents."""

from __future__ import annotations

from typing import Any

from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from api.problems import ProblemError

KIND_STATUS = {"not_found": 404, "forbidden": 403, "conflict": 409, "invalid": 422}


def problem_from(exc: BaseException, deal_id: str) -> ProblemError:
    if isinstance(exc, WorkflowUpdateFailedError):
        cause = exc.cause
        while cause is not None and not isinstance(cause, ApplicationError):
            cause = getattr(cause, "cause", None)
        if isinstance(cause, ApplicationError):
            if cause.type == "transition_refused":
                details: dict[str, Any] = cause.details[0] if cause.details else {}
                problems = details.get("problems", [])
                return ProblemError(
                    int(details.get("status", 409)),
                    cause.message,
                    slug="transition-refused",
                    title="Transition refused",
                    errors=[
                        {"loc": p.get("loc", []), "msg": p["msg"], "code": p.get("code")}
                        for p in problems
                    ],
                )
            status = KIND_STATUS.get(cause.type or "", 409)
            return ProblemError(status, cause.message)
        return ProblemError(409, str(exc))
    if isinstance(exc, RPCError):
        if exc.status == RPCStatusCode.NOT_FOUND:
            return ProblemError(
                409, f"deal {deal_id} is closed (its workflow has completed); it cannot change"
            )
        return ProblemError(
            503, f"Temporal did not answer: {exc.message}", headers={"Retry-After": "2"}
        )
    raise exc
