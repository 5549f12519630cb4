"""The one error hierarchy of pdpj-async; HTTP statuses are assigned only in the API layer."""

from __future__ import annotations


class PdpjAsyncError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(PdpjAsyncError):
    """The configuration is invalid; the message names the key."""


class InvalidProcessNumber(PdpjAsyncError, ValueError):
    """A CNJ process number is malformed; `reason` says which part is wrong."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class DatabaseUnavailable(PdpjAsyncError):
    """PostgreSQL cannot be reached."""


class AuthError(PdpjAsyncError):
    """The request carries no valid API key."""


class Forbidden(PdpjAsyncError):
    """The API key is valid but its role does not allow the action."""


class InvalidLink(Forbidden):
    """A signed download link that is malformed, forged or expired."""


class NotFound(PdpjAsyncError):
    """A thing the caller asked for does not exist (or is not theirs)."""


class Conflict(PdpjAsyncError):
    """The request conflicts with the current state of a resource."""


class InvalidRequest(PdpjAsyncError):
    """The request is malformed; the message says what was wrong."""


class InvalidWebhookUrl(InvalidRequest):
    """A webhook URL is refused (scheme, credentials, or a non-public address)."""


class UpstreamError(PdpjAsyncError):
    """Base of failures talking to PDPJ."""


class UpstreamNotFound(UpstreamError):
    """PDPJ has no such process or document (404 or an empty answer)."""


class UpstreamTransient(UpstreamError):
    """A failure worth retrying: timeout, reset, 5xx, 429, "not ready" answer."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamBusy(UpstreamTransient):
    """PDPJ is busy (429, 503, or a refused connection): not the document's fault.

    `retry_after` is PDPJ's Retry-After (None when it gave none); traffic on the token pauses.
    """


class UpstreamPermanent(UpstreamError):
    """A failure that retrying will not fix: 403 sigiloso, 404, wrong content."""


class UpstreamAuthExpired(UpstreamError):
    """PDPJ answered 401: the bearer token expired or is invalid."""


class StorageError(PdpjAsyncError):
    """The object store failed; usually transient."""


class ContentMismatch(PdpjAsyncError):
    """Downloaded bytes do not match what was declared (size, type, HTML shell)."""


class LeaseLost(PdpjAsyncError):
    """A queue row's lease was taken over: this worker's writes are refused."""


class PermanentFailure(PdpjAsyncError):
    """Raised by a queue handler to fail its row without further retries."""


class RetryLater(PdpjAsyncError):
    """Raised by a queue handler to retry its row after `delay` seconds (or the backoff)."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class InvalidTransition(PdpjAsyncError):
    """A status change that the status machine does not allow."""


class WebhookUrlRefused(InvalidWebhookUrl):
    """The SSRF guard refused a webhook URL; `reason` is a short machine-readable cause."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Release(PdpjAsyncError):
    """Raised by a queue handler to give its row back unfailed, the attempt not counted."""


class Deferred(PdpjAsyncError):
    """Raised by a queue handler to put its row back for `delay` s, the attempt not counted."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


class RateLimited(PdpjAsyncError):
    """The API key spent its request budget; retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float, limit: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.limit = limit
