"""pgclip's errors as HTTP responses: one function, one table."""

from __future__ import annotations

import logging
import re

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException

from pgclip.core.errors import (
    ConfigError,
    DatabaseUnavailable,
    InvalidInput,
    ModelLoadError,
    NotFound,
    NotReady,
    PgclipError,
    SchemaNotReady,
)

log = logging.getLogger("pgclip.api")

RETRY_AFTER_SECONDS = 2  # a 503's Retry-After: the database restarting, migrations running, a model loading

STATUS = {
    ConfigError: 409,  # e.g. activating a model below full coverage, a rebuild already running
    InvalidInput: 400,
    NotFound: 404,
    NotReady: 409,
    SchemaNotReady: 503,
    DatabaseUnavailable: 503,
    ModelLoadError: 503,
}


def _body(status: int, detail: str) -> Response:
    # Every 503 is a state that passes (an outage, a migration, a model loading): say when to try again.
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
    return Response({"status_code": status, "detail": detail}, status_code=status, headers=headers)


def pgclip_error(request: Request, exc: PgclipError) -> Response:
    status = next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 400)
    return _body(status, str(exc))


def validation_error(request: Request, exc: msgspec.ValidationError | msgspec.DecodeError) -> Response:
    return _body(400, f"invalid request: {exc}")


def undecodable_form(request: Request, exc: UnicodeDecodeError) -> Response:
    # Litestar decodes multipart parts without a filename as text; raw bytes there are a client error.
    return _body(400, "malformed request: a form field is not UTF-8 text (send images as file parts with a filename)")


def unexpected_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException):  # Litestar's own 4xx (validation, 404 route, 405, 413)
        body = {"status_code": exc.status_code, "detail": _litestar_detail(request, exc)}
        if getattr(exc, "extra", None):
            body["extra"] = exc.extra
        return Response(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return _body(500, "internal error (logged on the server)")


def _litestar_detail(request: Request, exc: HTTPException) -> str:
    """Litestar's detail; for its validation errors, the fields and reasons it lists in ``extra``
    (so that the detail alone names the problem) and the path without the query string (which
    it would echo back whole, however long)."""
    extra = getattr(exc, "extra", None)
    if exc.status_code == 413 and exc.detail == "Request Entity Too Large":  # Litestar's, on any route
        try:
            limit = request.route_handler.resolve_request_max_body_size()
        except Exception:  # no route resolved: say what is known
            limit = None
        # The upload takes videos' larger bodies (it holds an image to PGCLIP_UPLOAD_MAX_BYTES itself).
        setting = ("PGCLIP_VIDEO_UPLOAD_MAX_BYTES" if request.url.path.rstrip("/") == "/api/images"
                   else "PGCLIP_UPLOAD_MAX_BYTES")
        return "the request is too large" + (f": at most {limit:,} bytes on this route ({setting})" if limit else "")
    if exc.status_code == 400 and exc.detail == "Request Entity Too Large":  # Litestar's multipart parser's
        return ("the multipart form goes past the form parser's limits: a part's headers too long "
                "(a file name of thousands of characters) or too many parts")
    if not exc.detail.startswith("Validation failed for ") or not isinstance(extra, list):
        return exc.detail
    problems = [_problem(e) for e in extra if isinstance(e, dict) and e.get("message")]
    return f"Validation failed for {request.method} {request.url.path}: {'; '.join(problems)}"


def _problem(error: dict) -> str:
    """One of Litestar's validation errors as a phrase; the body as a whole is "the request body"
    (Litestar names it ``data``, and says ``'data'`` when there is none)."""
    key, message = error.get("key"), str(error.get("message"))
    if key == "data" and error.get("source") == "body":
        if message == "'data'":
            return "the request body is empty: send a JSON object"
        got = re.search(r"got `(\w+)`", message)
        if message.startswith("Expected `object`") and got:
            return f"the request body must be a JSON object, not {got[1]}"
    return f"{key}: {message}"


HANDLERS = {
    PgclipError: pgclip_error,
    msgspec.ValidationError: validation_error,
    msgspec.DecodeError: validation_error,
    UnicodeDecodeError: undecodable_form,
    Exception: unexpected_error,
}
