"""S3 SigV4 query-string presigning for GET, without botocore's per-call machinery.

botocore's generate_presigned_url builds a whole request through its event system for
every URL (about 0.3 ms); a status response lists up to a thousand documents. Here the
signing key is derived once per day and region, the URL prefix once per storage, and a
URL costs one SHA-256 of the canonical request and one HMAC of the string to sign. The
output is byte-for-byte what botocore produces for the same time and credentials (the
tests check this).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import time
from typing import Any
from urllib.parse import quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def signing_key(secret_key: str, datestamp: str, region: str, service: str = "s3") -> bytes:
    """The SigV4 signing key for one day, region and service."""
    k_date = _hmac(("AWS4" + secret_key).encode(), datestamp)
    return _hmac(_hmac(_hmac(k_date, region), service), "aws4_request")


def _qv(value: str) -> str:
    # botocore's percent_encode: everything but unreserved characters.
    return quote(value, safe="-_.~")


@functools.lru_cache(maxsize=8192)
def _qv_cached(value: str) -> str:
    return _qv(value)


@functools.lru_cache(maxsize=8192)
def _quote_segment(segment: str) -> str:
    # Keys are unique but their last segments (document names) repeat a lot.
    return quote(segment, safe="/~")


# What quote() leaves alone; our keys' heads (prefix, digits, uuid) are almost always only this.
_UNQUOTED = re.compile(r"[A-Za-z0-9_.~/-]*")


def quote_key(key: str) -> str:
    """The key as an S3 URL path (botocore's quoting: all but unreserved, `/` and `~`)."""
    head, sep, name = key.rpartition("/")
    if not _UNQUOTED.fullmatch(head):
        head = quote(head, safe="/~")
    return head + sep + _quote_segment(name)


class Presigner:
    """Presigns GETs of keys under one bucket URL with one set of credentials."""

    def __init__(
        self,
        bucket_url: str,
        *,
        region: str,
        access_key_id: str,
        secret_access_key: str,
        session_token: str | None = None,
    ) -> None:
        """`bucket_url` is the URL of the bucket's root, ending in `/` (as botocore resolves it)."""
        parts = urlsplit(bucket_url)
        if not bucket_url.endswith("/"):
            raise ValueError("bucket_url must end with '/'")
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
            host = f"{host}:{parts.port}"
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._path_prefix = parts.path
        self._host_header = f"host:{host}\n"
        self._region = region
        self._second = -1
        self._amz_date = ""
        self._scope_tail = f"/{region}/s3/aws4_request"
        self.set_credentials(access_key_id, secret_access_key, session_token)

    def set_credentials(
        self, access_key_id: str, secret_access_key: str, session_token: str | None = None
    ) -> None:
        """Use new credentials (after a refresh); drops the cached signing key."""
        self._access_key_id = access_key_id
        self._secret = secret_access_key
        self._token_param = (
            "" if session_token is None else f"&X-Amz-Security-Token={_qv(session_token)}"
        )
        self._key_date = ""
        self._credential = ""
        self._mac: Any = None

    def url(
        self,
        key: str,
        expires_in: int,
        *,
        response_content_disposition: str | None = None,
        now: float | None = None,
    ) -> str:
        """A presigned GET URL for `key`, valid `expires_in` seconds from `now` (default: now)."""
        second = int(time.time() if now is None else now)
        if second != self._second:
            self._second = second
            self._amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))
        amz_date = self._amz_date
        datestamp = amz_date[:8]
        if datestamp != self._key_date:
            key_bytes = signing_key(self._secret, datestamp, self._region)
            # An HMAC keyed once per day; each URL copies it (cheaper than re-keying).
            self._mac = hmac.new(key_bytes, digestmod=hashlib.sha256)
            self._key_date = datestamp
            self._credential = _qv(f"{self._access_key_id}/{datestamp}{self._scope_tail}")
        scope = datestamp + self._scope_tail
        path = self._path_prefix + quote_key(key)
        # In URL order (botocore: operation params, then auth params in insertion order).
        auth = (
            f"X-Amz-Algorithm={ALGORITHM}"
            f"&X-Amz-Credential={self._credential}"
            f"&X-Amz-Date={amz_date}&X-Amz-Expires={expires_in}&X-Amz-SignedHeaders=host"
            f"{self._token_param}"
        )
        op = ""
        if response_content_disposition is not None:
            op = f"response-content-disposition={_qv_cached(response_content_disposition)}"
        query = f"{op}&{auth}" if op else auth
        # The canonical query is sorted by name; upper-case X-Amz-* sort before response-*.
        canonical_query = "&".join(sorted(query.split("&")))
        canonical = f"GET\n{path}\n{canonical_query}\n{self._host_header}\nhost\nUNSIGNED-PAYLOAD"
        string_to_sign = (
            f"{ALGORITHM}\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        )
        mac = self._mac.copy()
        mac.update(string_to_sign.encode())
        signature = mac.hexdigest()
        return f"{self._origin}{path}?{query}&X-Amz-Signature={signature}"
