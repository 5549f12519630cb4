"""The sandbox's run-time state: settings, faults, overrides, additions, counters."""

from __future__ import annotations

import time
from collections import Counter
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from .. import cnj
from ..ratelimit import TokenBucket
from . import rich
from .data import ProcessOverride, SandboxProcess, catalog, document_sha256, generate_process

Scope = Literal["binary", "details", "text", "all"]


class Fault(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A misbehaviour for matching requests; the newest matching rule wins."""

    uuid: str | None = None
    # 20 digits or masked; matches that process's details and documents.
    number: str | None = None
    scope: Scope = "binary"
    # Answer this status instead (500/502/503/429/404/403...), with Retry-After if given.
    status: int | None = None
    retry_after: str | None = None
    latency_ms: float = 0.0
    # Answer the web app's HTML shell (200 text/html) instead of the file; with `status`,
    # a bare HTML error page with that status instead (the gateway's 403).
    html_shell: bool = False
    # Answer a short "being prepared" JSON (200) instead of the file.
    not_ready: bool = False
    # Send this many body bytes, then abort the connection (a reset).
    reset_after: int | None = None
    # Send this many body bytes under the full Content-Length, then close cleanly.
    truncate_after: int | None = None
    bandwidth_bps: int | None = None
    # Apply to this many requests, then disappear; None: until cleared.
    times: int | None = None


NonNegative = Annotated[float, msgspec.Meta(ge=0)]
# Seconds of per-second counts the hidden limit keeps for /_sandbox/stats.
TIMELINE_S = 900


class Limit(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A hidden limit, as PDPJ has one: above `rate` requests/s, 429 with Retry-After."""

    # Requests per second admitted (a token bucket holding `burst`); 0: no limit.
    rate: NonNegative = 0.0
    # Requests admitted at once after a quiet spell; None: one second's worth (the rate).
    burst: Annotated[float, msgspec.Meta(ge=1)] | None = None
    # Added to every API request, admitted or refused (the limit is checked on arrival).
    latency_ms: NonNegative = 0.0
    retry_after: str = "1"


class SandboxSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How the sandbox behaves; faults and overrides can also be changed at run time."""

    token: str = "sandbox-token"  # noqa: S105 - the sandbox's well-known default
    # Added to every API request.
    latency_ms: float = 0.0
    docs_per_process: tuple[int, int] = (0, 8)
    # Movements generated per instance besides the first three: hundreds, as real processes have.
    movements_per_instance: tuple[int, int] = (100, 300)
    doc_size_range: tuple[int, int] = (1024, 256 * 1024)
    sigiloso_ratio: float = 0.0
    # SIGILOSO documents answer 403, as PDPJ does to a token without access.
    refuse_sigiloso: bool = True
    default_form: Literal["array", "object"] = "array"
    # After this many authenticated requests the token answers 401 until a new one is set.
    token_expires_after: int | None = None
    faults: list[Fault] = []
    overrides: list[ProcessOverride] = []
    chunk_size: int = 64 * 1024
    limit: Limit = Limit()


class DocStats(msgspec.Struct):
    fetches: int = 0
    completed: int = 0
    bytes: int = 0


class SandboxState:
    """Run-time state: token, faults, overrides, counters."""

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self.reset()

    def reset(self) -> None:
        """Back to the settings: token, faults, overrides; counters cleared."""
        self.token = self.settings.token
        self.token_expires_after = self.settings.token_expires_after
        self.faults: list[Fault] = list(self.settings.faults)
        # Before the overrides below, which invalidate cache entries.
        self._cache: dict[str, SandboxProcess] = {}
        self.overrides: dict[str, ProcessOverride] = {}
        self.additions: dict[str, rich.Additions] = {}
        for override in self.settings.overrides:
            self.set_override(override)
        self.authorized = 0
        self.requests = 0
        self.unauthorized = 0
        self.by_status: Counter[str] = Counter()
        self.details: Counter[str] = Counter()
        self.user_agents: Counter[str] = Counter()
        self.docs: dict[str, DocStats] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        # What the hidden limit admitted and refused: in all, and per second.
        self.served = 0
        self.refused = 0
        self.timeline: dict[int, list[int]] = {}
        self.set_limit(self.settings.limit)

    def set_limit(self, limit: Limit) -> None:
        """Apply a hidden limit from now on (its allowance starts full); counters continue."""
        self.limit = limit
        self._bucket = TokenBucket(limit.rate, limit.burst) if limit.rate > 0 else None

    def admit(self) -> bool:
        """Whether the hidden limit lets one more request through now (counted either way)."""
        admitted = self._bucket is None or self._bucket.try_acquire() == 0.0
        second = int(time.time())
        counts = self.timeline.get(second)
        if counts is None:
            counts = self.timeline[second] = [0, 0]
            self.timeline.pop(second - TIMELINE_S, None)
        if admitted:
            self.served += 1
            counts[0] += 1
        else:
            self.refused += 1
            counts[1] += 1
        return admitted

    def set_override(self, override: ProcessOverride) -> None:
        """Replace how one number answers."""
        digits = cnj.parse(override.number).digits
        self.overrides[digits] = msgspec.structs.replace(override, number=digits)
        # A new override replaces the process: what tests added to the old one goes with it.
        self.additions.pop(digits, None)
        self._cache.pop(digits, None)

    def process(self, number: cnj.ProcessNumber) -> SandboxProcess:
        """The (cached) process for a number."""
        found = self._cache.get(number.digits)
        if found is None:
            found = generate_process(
                number,
                self.overrides.get(number.digits),
                size_range=self.settings.doc_size_range,
                count_range=self.settings.docs_per_process,
                sigiloso_ratio=self.settings.sigiloso_ratio,
                movement_range=self.settings.movements_per_instance,
            )
            added = self.additions.get(number.digits)
            if added is not None:
                raw = rich.apply(found.raw, added)
                found = SandboxProcess(raw, {**catalog(raw), **found.documents})
            self._cache[number.digits] = found
        return found

    def add(self, number: cnj.ProcessNumber, movements: Any = (), documents: Any = ()) -> None:
        """Add movements and documents (PDPJ entries) to a process's current instance."""
        added = self.additions.setdefault(number.digits, rich.Additions())
        added.movements.extend(movements)
        added.documents.extend(documents)
        self._cache.pop(number.digits, None)

    def expected_document(self, number: str, uuid: str) -> tuple[int, str, str]:
        """(size, sha256, mime) of what the binary endpoint serves for this document."""
        spec = self.process(cnj.parse(number)).documents[uuid]
        return spec.size, document_sha256(spec.uuid, spec.size, spec.mime), spec.mime

    def fault_for(self, kind: str, digits: str, uuid: str | None) -> Fault | None:
        """The newest matching fault, counting down its `times`."""
        for index in range(len(self.faults) - 1, -1, -1):
            fault = self.faults[index]
            if fault.scope not in (kind, "all"):
                continue
            if fault.uuid is not None and fault.uuid != uuid:
                continue
            if fault.number is not None and cnj.parse(fault.number).digits != digits:
                continue
            if fault.times is not None:
                if fault.times <= 1:
                    del self.faults[index]
                else:
                    self.faults[index] = msgspec.structs.replace(fault, times=fault.times - 1)
            return fault
        return None

    def stats(self) -> dict[str, Any]:
        """Counters for tests: per-uuid fetches and completed fetches, statuses, concurrency."""
        return {
            "requests": self.requests,
            "unauthorized": self.unauthorized,
            "by_status": dict(self.by_status),
            "details": dict(self.details),
            "user_agents": dict(self.user_agents),
            "documents": {k: msgspec.to_builtins(v) for k, v in self.docs.items()},
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "limit": {
                **msgspec.to_builtins(self.limit),
                "served": self.served,
                "refused": self.refused,
                # Unix second -> [served, refused]: how the limit was met over time.
                "timeline": {str(k): v for k, v in sorted(self.timeline.items())},
            },
        }


SANDBOX = web.AppKey("sandbox", SandboxState)
