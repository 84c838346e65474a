"""RFC 9457 problem details: every error the API returns is ``application/problem+json``."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from fencex.errors import (
    CorruptRecord,
    IdTaken,
    InAnotherMob,
    InvalidInput,
    LimitExceeded,
    NotFound,
    Unavailable,
    VersionConflict,
)

PROBLEM = "application/problem+json"
TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    412: "Precondition failed",
    413: "Content too large",
    422: "Unprocessable content",
    428: "Precondition required",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


class Problem(Exception):
    """Raise to answer with a problem: the status, a sentence saying what is wrong, extra headers
    (``Retry-After``, ``WWW-Authenticate``) and extension members of the body."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers
        self.extra = extra

    def asgi(self, instance: str) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """Status, body and headers, for answering from raw ASGI exactly as FastAPI would."""
        body = problem_body(self.status, self.detail, instance, **self.extra)
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (self.headers or {}).items()]
        headers += [(b"content-length", str(len(body)).encode()), (b"content-type", PROBLEM.encode())]
        return self.status, body, headers


def problem_body(status: int, detail: str, instance: str | None = None, **extra: Any) -> bytes:
    """The JSON of one problem: the one place its shape is written."""
    body = {"type": "about:blank", "title": TITLES.get(status, "Error"), "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    body.update(extra)
    return orjson.dumps(body)


def problem(
    status: int, detail: str, instance: str | None = None, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    return Response(
        problem_body(status, detail, instance, **extra), status_code=status, media_type=PROBLEM, headers=headers
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        return problem(exc.status, exc.detail, request.url.path, headers=exc.headers, **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return problem(exc.status_code, str(exc.detail), request.url.path, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"location": list(e.get("loc", ())), "message": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"location": [], "message": "invalid request"}
        where = ".".join(str(x) for x in first["location"])
        return problem(
            422, f"{where}: {first['message']}" if where else str(first["message"]), request.url.path, errors=errors
        )

    @app.exception_handler(InvalidInput)
    async def _invalid(request: Request, exc: InvalidInput) -> Response:
        return problem(422, str(exc), request.url.path)

    @app.exception_handler(LimitExceeded)
    async def _limit(request: Request, exc: LimitExceeded) -> Response:
        return problem(413 if exc.too_large else 422, str(exc), request.url.path, limit=exc.limit)

    @app.exception_handler(IdTaken)
    async def _taken(request: Request, exc: IdTaken) -> Response:
        return problem(409, str(exc), request.url.path)

    @app.exception_handler(InAnotherMob)
    async def _in_another_mob(request: Request, exc: InAnotherMob) -> Response:
        return problem(409, str(exc), request.url.path, mob=exc.mob, devices=exc.devices)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> Response:
        return problem(404, str(exc), request.url.path)

    @app.exception_handler(VersionConflict)
    async def _conflict(request: Request, exc: VersionConflict) -> Response:
        return problem(
            412,
            f"the {exc.what} is at version {exc.actual}; your If-Match was {exc.expected}. "
            "Fetch it again and reapply your change.",
            request.url.path,
            current_version=exc.actual,
        )

    @app.exception_handler(CorruptRecord)
    async def _corrupt(request: Request, exc: CorruptRecord) -> Response:
        return problem(500, f"stored data that does not read: {exc}", request.url.path)

    @app.exception_handler(Unavailable)
    async def _unavailable(request: Request, exc: Unavailable) -> Response:
        return problem(503, f"a backing service is unavailable: {exc}", request.url.path, headers={"Retry-After": "2"})
