"""Configuration: one TOML file decoded into frozen msgspec Structs, overridable by environment."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from .errors import ConfigError

ENV_PREFIX = "PDPJ_ASYNC__"


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class DaemonConfig(_Section, frozen=True):
    # Where the embedded PostgreSQL, the filesystem store and generated secrets live.
    data_dir: str = "./data"
    # Identifies this instance in queue leases; empty means hostname:pid.
    instance_id: str = ""
    # Seconds that running downloads get to finish after SIGTERM before they are released.
    shutdown_grace_s: float = 20.0


class HttpConfig(_Section, frozen=True):
    host: str = "127.0.0.1"
    port: int = 8080
    # Base URL clients reach us at; used in status_url and signed download URLs.
    public_url: str = ""
    max_body_bytes: int = 65536
    # The bulk routes' bodies (up to 10,000 numbers: about 300 KB as JSON).
    max_bulk_body_bytes: int = 1_048_576
    # Largest request line / header a client may send.
    max_line_size: int = 8190
    max_field_size: int = 8190
    # Serve HTTPS with this certificate chain and key (PEM); empty: plain HTTP (loopback, or
    # behind a TLS-terminating reverse proxy).
    tls_cert_file: str = ""
    tls_key_file: str = ""


class MetricsConfig(_Section, frozen=True):
    # "host:port" of a separate loopback listener for /metrics (e.g. "127.0.0.1:9464");
    # when set, /metrics is not served on the main port. Empty: on the main port.
    listen: str = ""


class DatabaseConfig(_Section, frozen=True):
    # Empty: start an embedded PostgreSQL under daemon.data_dir.
    dsn: str = ""
    pool_min: int = 2
    pool_max: int = 20
    migrate_on_start: bool = True
    command_timeout_s: float = 30.0
    # "transaction": `dsn` goes through a transaction-pooling PgBouncer (no prepared statements
    # are kept across transactions); LISTEN/NOTIFY and migrations then need `direct_dsn`, a
    # session straight to PostgreSQL.
    pooler: Literal["none", "transaction"] = "none"
    direct_dsn: str = ""

    def __post_init__(self) -> None:
        if self.pooler == "transaction" and not self.direct_dsn:
            raise ValueError(
                "database.direct_dsn: required when database.pooler is 'transaction' "
                "(LISTEN/NOTIFY and migrations need a session of their own)"
            )


class LoggingConfig(_Section, frozen=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # "auto": console when stderr is a terminal, JSON lines otherwise.
    format: Literal["auto", "json", "console"] = "auto"


class PdpjConfig(_Section, frozen=True):
    base_url: str = "https://portaldeservicos.pdpj.jus.br/api/v2"
    user_agent: str = "Mozilla/5.0 (X11; Linux x86_64) pdpj-async/0.1"
    extra_headers: dict[str, str] = {}
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    # Global cap on concurrent upstream requests.
    max_concurrency: int = 32
    # Adaptive pacing (README "How pdpj-async paces PDPJ"): the rate per token, all daemons
    # together, is found between the floor and the polite ceiling; it starts at the start rate.
    max_requests_per_second: float = 50.0
    min_requests_per_second: float = 1.0
    start_requests_per_second: float = 8.0
    # A 429/503 without Retry-After pauses the token this long.
    busy_pause_s: float = 1.0
    # Seconds between exchanges of the pacing state through the database (0: this daemon alone).
    pacing_sync_s: float = 0.25
    # Deprecated: a fixed cap, now folded into the ceiling (the lower of the two); 0: unset.
    requests_per_second: float = 0.0
    # A bearer token given directly (prefer token_file or the refresh grant).
    token: str = ""
    # A file holding the bearer token; re-read when it changes and on SIGHUP.
    token_file: str = ""
    # OAuth2 refresh-token grant against the PDPJ single sign-on.
    sso_token_url: str = ""
    sso_client_id: str = ""
    refresh_token_file: str = ""
    # Refresh this many seconds before the JWT's exp.
    refresh_margin_s: float = 120.0
    # A stored process older than this is fetched again on request.
    freshness_ttl_s: float = 3600.0
    # Seconds between looks at token_file for a replaced token.
    token_poll_s: float = 1.0
    # Longest wait a PDPJ Retry-After may impose on a download (keep <= queue.backoff_cap_s).
    retry_after_cap_s: float = 600.0

    def __post_init__(self) -> None:
        if not 0 < self.min_requests_per_second <= self.max_requests_per_second:
            raise ValueError(
                "pdpj.min_requests_per_second: must be above 0 and at most "
                "pdpj.max_requests_per_second"
            )


class QueueConfig(_Section, frozen=True):
    workers: int = 16
    poll_interval_s: float = 5.0
    lease_s: float = 60.0
    heartbeat_s: float = 15.0
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 600.0
    max_attempts: int = 8
    # Most rows one claim takes (a claim asks for as many as there are free workers, up to this).
    claim_batch: int = 50


class StorageConfig(_Section, frozen=True):
    backend: Literal["filesystem", "s3"] = "filesystem"
    # Filesystem root; empty means {daemon.data_dir}/objects.
    root: str = ""
    # Lifetime of signed download URLs.
    url_ttl_s: int = 3600
    # HMAC key for filesystem download URLs; empty means generated under data_dir.
    signing_key: str = ""
    # Filesystem objects written with O_DIRECT (through the page cache where the filesystem
    # refuses it): no copy into the cache, no writeback at the fsync.
    direct_io: bool = True
    bucket: str = "pdpj-documents"
    prefix: str = ""
    endpoint_url: str = ""
    region: str = "us-east-1"
    access_key_id: str = ""
    secret_access_key: str = ""
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    part_size: int = 8 * 1024 * 1024
    parts_in_flight: int = 4
    # A body of known size above part_size and up to this goes as one streamed PutObject.
    single_put_max_size: int = 1024 * 1024 * 1024
    # Attempts per S3 call (botocore's standard retry mode), the first included.
    max_attempts: int = 3
    # Abort multipart uploads older than this (leftovers of a crash).
    sweep_age_s: float = 86400.0
    sweep_interval_s: float = 3600.0


class WebhooksConfig(_Section, frozen=True):
    timeout_s: float = 15.0
    # Seconds between attempts: the first is immediate.
    schedule_s: list[float] = msgspec.field(
        default_factory=lambda: [0, 5, 300, 1800, 7200, 18000, 36000, 36000]
    )
    jitter: float = 0.1
    # Host names (and their subdomains) webhooks may go to; empty or ["*"]: any public host.
    allowed_domains: list[str] = []
    # Private ranges (10/8, 172.16/12, 192.168/16, fc00::/7, ...) become reachable; loopback and
    # link-local stay refused (unless listed in allowed_networks), cloud metadata always.
    allow_private_networks: bool = False
    # CIDR ranges a receiver may be in whatever their kind (on-premise receivers, 127.0.0.0/8 in
    # tests); cloud metadata and IPv4-mapped IPv6 addresses are refused even here.
    allowed_networks: list[str] = []
    # Ports a webhook URL may name (the scheme's default when it names none); empty: any.
    allowed_ports: list[int] = msgspec.field(default_factory=lambda: [80, 443, 8443])
    max_documents_in_payload: int = 1000
    # Both the old and the new signing secret are sent for this long after a rotation.
    secret_overlap_s: float = 86400.0
    # Attempts in flight at once, per daemon.
    concurrency: int = 16
    # An attempt's claim on a delivery; another daemon retries it after this (keep > timeout_s).
    lease_s: float = 60.0
    # Fallback poll when no NOTIFY arrives.
    poll_interval_s: float = 5.0
    # Bytes of a receiver's response body that are read and stored.
    max_response_bytes: int = 4096
    # Messages the built-in webhook-test receiver keeps in memory.
    test_receiver_keep: int = 100
    # The public built-in receiver (POST /api/v1/webhooks/webhook-test) checks signatures, a cost
    # per request: off unless asked for (`pdpj-async dev` turns it on).
    test_receiver: bool = False


class RateLimitConfig(_Section, frozen=True):
    # Token bucket per API key; 0 disables.
    requests_per_s: float = 20.0
    burst: int = 100
    # Token bucket per client IP for requests without a valid key (unknown, malformed, revoked,
    # missing): each costs a lookup, so a flood of them is slowed before it reaches the database.
    unauthenticated_per_s: float = 5.0
    unauthenticated_burst: int = 20
    # An unknown key is remembered this long, so that repeating it costs no query.
    negative_cache_s: float = 30.0
    # Authentication waits at most this long for a database connection (503, not a queue).
    auth_timeout_s: float = 2.0


class AccessLogConfig(_Section, frozen=True):
    # Lines are written in batches at most this far apart.
    flush_interval_s: float = 1.0


class RetentionConfig(_Section, frozen=True):
    # Days each kind of history is kept; 0 keeps it for ever. Documents and their objects, and
    # the processes they belong to, are never pruned.
    jobs_days: float = 365.0
    webhook_deliveries_days: float = 180.0
    webhook_attempts_days: float = 90.0
    access_log_days: float = 365.0
    # Seconds between two pruning passes, and rows removed by one statement at the most.
    interval_s: float = 3600.0
    batch: int = 5000


class TextConfig(_Section, frozen=True):
    # Fetch or extract each available document's text (false: binaries only, one PDPJ request
    # per document instead of two; text_status "off", search finds nothing new).
    enabled: bool = True
    # OCR (Tesseract, Portuguese) of pages with no text layer, when the binary is installed.
    ocr: bool = False
    # Extractions running at once: CPU-bound, kept below the download workers.
    workers: int = 2
    # Characters of each document's text that are indexed (storage keeps all of it).
    index_cap_chars: int = 1_000_000
    # The search ranks this many of the most recent visible matches (a bounded candidate set).
    search_candidates: int = 300


class WatchesConfig(_Section, frozen=True):
    # A watch's refresh interval when the client names none, and the shortest it may name.
    default_interval_s: int = 86400
    min_interval_s: int = 3600
    # A new watch's first fetch comes within this many seconds (spread: no herd after a bulk).
    first_fetch_spread_s: float = 300.0
    # Each due time moves by up to this share of the interval, either way (capped at 5 min).
    jitter_share: float = 0.002
    # A process.updated whose new documents are still downloading is looked at again after
    # this many seconds (growing to 12 times it), and sent as it is after announce_max_wait_s.
    announce_poll_s: float = 5.0
    announce_max_wait_s: float = 21600.0


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    daemon: DaemonConfig = DaemonConfig()
    http: HttpConfig = HttpConfig()
    database: DatabaseConfig = DatabaseConfig()
    logging: LoggingConfig = LoggingConfig()
    pdpj: PdpjConfig = PdpjConfig()
    queue: QueueConfig = QueueConfig()
    storage: StorageConfig = StorageConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()
    access_log: AccessLogConfig = AccessLogConfig()
    retention: RetentionConfig = RetentionConfig()
    metrics: MetricsConfig = MetricsConfig()
    text: TextConfig = TextConfig()
    watches: WatchesConfig = WatchesConfig()


_PATH_RE = re.compile(r" - at `\$((?:\.\w+|\[\d+\])*)`$")
_UNKNOWN_RE = re.compile(r"^Object contains unknown field `([^`]+)`")


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file (if any), apply environment overrides, and decode; raises ConfigError."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    env = os.environ if env is None else env
    _apply_env(raw, env)
    _resolve_credentials(raw, env)
    return decode_config(raw)


def decode_config(raw: dict[str, Any]) -> Config:
    """Decode a plain mapping into Config; raises ConfigError naming the offending key."""
    try:
        return msgspec.convert(raw, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(str(exc), raw)) from None


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"{name}: expected {ENV_PREFIX}SECTION__KEY")
        section = raw.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise ConfigError(f"{parts[0]}: expected a table")
        section[parts[1]] = _env_value(value)


# systemd's LoadCredential= puts each credential in a file under $CREDENTIALS_DIRECTORY, readable
# only by the service. A value "credential:NAME" is that file's content (database.dsn,
# storage.signing_key, ...); "${CREDENTIALS_DIRECTORY}" in a value is the directory (for keys that
# name a file, like pdpj.token_file).
CREDENTIAL_PREFIX = "credential:"
_CREDENTIALS_VAR = "${CREDENTIALS_DIRECTORY}"


def _resolve_credentials(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    for section, values in raw.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            if isinstance(value, str) and (
                value.startswith(CREDENTIAL_PREFIX) or _CREDENTIALS_VAR in value
            ):
                values[key] = _credential(f"{section}.{key}", value, env)


def _credential(dotted: str, value: str, env: Mapping[str, str]) -> str:
    directory = env.get("CREDENTIALS_DIRECTORY", "")
    if not directory:
        raise ConfigError(f"{dotted}: names a credential, but $CREDENTIALS_DIRECTORY is not set")
    if not value.startswith(CREDENTIAL_PREFIX):
        return value.replace(_CREDENTIALS_VAR, directory)
    name = value[len(CREDENTIAL_PREFIX) :]
    if not name or "/" in name:
        raise ConfigError(f"{dotted}: expected credential:NAME, got {value!r}")
    try:
        return (Path(directory) / name).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{dotted}: cannot read credential {name!r}: {exc.strerror}") from None


def _env_value(value: str) -> Any:
    # Lists and tables come as JSON; scalars stay strings and are converted by type.
    if value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _explain(message: str, raw: dict[str, Any]) -> str:
    path = ""
    match = _PATH_RE.search(message)
    if match:
        path = match.group(1)
        message = message[: match.start()]
    keys = [k for k in re.split(r"\.|\[(\d+)\]", path) if k]
    unknown = _UNKNOWN_RE.match(message)
    if unknown:
        return ".".join([*keys, unknown.group(1)]) + ": unknown key"
    dotted = ".".join(keys) or "(top level)"
    value: Any = raw
    for key in keys:
        try:
            value = value[int(key)] if isinstance(value, list) else value[key]
        except (KeyError, IndexError, TypeError, ValueError):
            value = None
            break
    if message.startswith(f"{dotted}."):
        return message  # a check of the section's own, naming its key already
    detail = message[:1].lower() + message[1:]
    detail = detail.replace("`", "")
    if value is not None and not isinstance(value, dict):
        detail = f"{detail.split(', got')[0]}, got {json.dumps(value, ensure_ascii=False)}"
    return f"{dotted}: {detail}"


def is_loopback_host(host: str) -> bool:
    """Whether a configured host name or address is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolved_data_dir(config: Config) -> Path:
    """The data directory as an absolute path."""
    return Path(config.daemon.data_dir).expanduser().resolve()


def public_url(config: Config) -> str:
    """Where clients reach this daemon."""
    if config.http.public_url:
        return config.http.public_url.rstrip("/")
    host = config.http.host if config.http.host not in {"0.0.0.0", "::", ""} else "127.0.0.1"  # noqa: S104
    scheme = "https" if config.http.tls_cert_file else "http"
    return f"{scheme}://{host}:{config.http.port}"
