"""Configuration: one TOML file decoded into frozen msgspec Structs, overridable by environment."""

from __future__ import annotations

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
    # Largest request line / header a client may send.
    max_line_size: int = 8190
    max_field_size: int = 8190


class DatabaseConfig(_Section, frozen=True):
    # Empty: start an embedded PostgreSQL under daemon.data_dir.
    dsn: str = ""
    pool_min: int = 2
    pool_max: int = 20
    migrate_on_start: bool = True
    command_timeout_s: float = 30.0


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
    # Politeness cap; 0 disables it.
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
    allowed_domains: list[str] = []
    allow_private_networks: bool = False
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


class RateLimitConfig(_Section, frozen=True):
    # Token bucket per API key; 0 disables.
    requests_per_s: float = 20.0
    burst: int = 100


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
    _apply_env(raw, os.environ if env is None else env)
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
    detail = message[:1].lower() + message[1:]
    detail = detail.replace("`", "")
    if value is not None and not isinstance(value, dict):
        detail = f"{detail.split(', got')[0]}, got {json.dumps(value, ensure_ascii=False)}"
    return f"{dotted}: {detail}"


def resolved_data_dir(config: Config) -> Path:
    """The data directory as an absolute path."""
    return Path(config.daemon.data_dir).expanduser().resolve()
