"""Bulk bodies: up to 10,000 CNJ numbers as a JSON array or as `text/csv`, read line by line.

Every line gets a result, so that a client can match each answer to what it sent:

- `accepted`: a valid number, the first time it appears in the body (`number`: its 20 digits);
- `duplicate`: a valid number already given on an earlier line (`duplicate_of` names that line);
- `invalid`: `reason` and `detail` are exactly those of a single request for that text (the
  `InvalidProcessNumber` of `cnj.parse`, as GET /api/v1/processes/{number} reports it).

`line` is 1-based: the line of a CSV body as an editor shows it, or the element's position in a
JSON array. CSV: one number per line; CRLF and LF both end a line; blank lines are skipped; a
UTF-8 byte-order mark and one pair of surrounding double quotes are dropped; a *first* line
without any digit is a header (`number`, `numero`, `processo`, ...) and is skipped. Any other
line is a number, so a stray word further down is reported invalid, not ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import msgspec
from aiohttp import web

from .. import cnj
from ..errors import InvalidProcessNumber, InvalidRequest
from . import appkeys

MAX_NUMBERS = 10_000
# Echoed inputs are cut here: a line is at most a number, and the answer stays bounded.
MAX_ECHO = 100
BULK_SUFFIX = "/bulk"
_BODY = web.RequestKey("raw_body", bytes)

LineStatus = Literal["accepted", "duplicate", "invalid"]


class BulkLine(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What became of one line (or array element) of a bulk body."""

    line: int
    input: str
    status: LineStatus
    number: str | None = None
    reason: str | None = None
    detail: str | None = None
    duplicate_of: int | None = None


def is_bulk(request: web.Request) -> bool:
    """True for the bulk POST routes, whose bodies may be larger (http.max_bulk_body_bytes)."""
    return request.method == "POST" and request.path.endswith(BULK_SUFFIX)


def body_limit(request: web.Request) -> int:
    """The largest body this request may carry, in bytes."""
    http = request.app[appkeys.CONFIG].http
    return http.max_bulk_body_bytes if is_bulk(request) else http.max_body_bytes


async def read_body(request: web.Request) -> bytes:
    """The request body (read once, then kept on the request); 413 past `body_limit`."""
    if not is_bulk(request):
        return await request.read()  # kept by aiohttp; client_max_size is max_body_bytes
    if _BODY in request:
        return request[_BODY]
    limit = body_limit(request)
    # Read from the stream, not request.read(): that one stops at the app-wide client_max_size,
    # and a chunked body (no Content-Length) is only measured while it is read.
    chunks: list[bytes] = []
    size = 0
    # read(n) gives what has arrived (up to n), not n: read until the end, or past the limit.
    while size <= limit and (chunk := await request.content.read(limit + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise web.HTTPRequestEntityTooLarge(
            max_size=limit, actual_size=size, text=f"the body is larger than {limit} bytes"
        )
    body = request[_BODY] = b"".join(chunks)
    return body


async def read_numbers(request: web.Request) -> list[BulkLine]:
    """The per-line results of the request's bulk body (JSON array, or text/csv)."""
    body = await read_body(request)
    kind = request.content_type
    if kind == "application/json":
        return parse_json(body)
    if kind in ("text/csv", "text/plain"):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"the CSV body is not UTF-8 (byte {exc.start})") from None
        return parse_csv(text)
    raise web.HTTPUnsupportedMediaType(
        text=f"Content-Type {kind[:60]!r}: expected application/json (an array of strings) "
        "or text/csv (one number per line)"
    )


def parse_json(body: bytes) -> list[BulkLine]:
    """A JSON array of strings, each a process number."""
    try:
        items = msgspec.json.decode(body, type=list[Any])
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"expected a JSON array of process numbers: {exc}") from None
    _check_count(len(items))
    return _results((i + 1, item) for i, item in enumerate(items))


def parse_csv(text: str) -> list[BulkLine]:
    """One number per line (see the module's docstring for what is tolerated)."""
    entries: list[tuple[int, str]] = []
    first = True
    # Only CR LF and LF end a line (str.splitlines would also split at form feeds, U+2028 and
    # the like, and the line numbers would no longer be those an editor shows).
    for n, raw in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
        value = raw.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1].strip()
        if not value:
            continue
        if first and not any(c.isdigit() for c in value):
            first = False
            continue  # a header line
        first = False
        entries.append((n, value))
    _check_count(len(entries))
    return _results(entries)


def accepted(lines: list[BulkLine]) -> list[cnj.ProcessNumber]:
    """The accepted numbers, in the order they were given."""
    return [cnj.ProcessNumber(ln.number) for ln in lines if ln.status == "accepted" and ln.number]


def _check_count(count: int) -> None:
    if count > MAX_NUMBERS:
        raise web.HTTPRequestEntityTooLarge(
            max_size=MAX_NUMBERS,
            actual_size=count,
            text=f"at most {MAX_NUMBERS} process numbers per request; the body has {count}",
        )
    if count == 0:
        raise InvalidRequest("the body holds no process numbers")


def _results(entries: Iterable[tuple[int, Any]]) -> list[BulkLine]:
    seen: dict[str, int] = {}
    return [_result(line, item, seen) for line, item in entries]


def _result(line: int, item: Any, seen: dict[str, int]) -> BulkLine:
    if not isinstance(item, str):
        shown = msgspec.json.encode(item).decode()[:MAX_ECHO]
        return BulkLine(
            line=line,
            input=shown,
            status="invalid",
            reason="type",
            detail="expected the process number as a string",
        )
    shown = item[:MAX_ECHO]
    try:
        number = cnj.parse(item)
    except InvalidProcessNumber as exc:
        return BulkLine(
            line=line, input=shown, status="invalid", reason=exc.reason, detail=exc.detail
        )
    first = seen.setdefault(number.digits, line)
    if first != line:
        return BulkLine(
            line=line, input=shown, status="duplicate", number=number.digits, duplicate_of=first
        )
    return BulkLine(line=line, input=shown, status="accepted", number=number.digits)
