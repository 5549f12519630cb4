"""The SigV4 signer of a buffered PutObject, whose body's sha256 the writer knows already.

Registered with botocore explicitly, when an S3 store is created (`use_known_payload_signer`),
never at import time: importing the storage package changes nothing in botocore.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import botocore.auth
from botocore.auth import S3SigV4Auth

from . import SHA256_META

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

# The metadata header holding the sha256 of a buffered PutObject's body (see KnownPayloadAuth).
_SHA256_HEADER = f"x-amz-meta-{SHA256_META}"
KNOWN_PAYLOAD_SIGNER = "s3v4-pdpj-known-payload"


class KnownPayloadAuth(S3SigV4Auth):
    """SigV4 for a PutObject whose body's sha256 the writer computed already: it travels in
    the object's `sha256` metadata, and here it is also the signed payload hash, so botocore
    does not hash the body a second time. AWS S3 checks the body against it as against any
    signed payload (a mismatch is refused), which makes it an end-to-end check of the bytes
    PDPJ sent; SeaweedFS and moto do not check it (docs/S3.md). Without that header (nothing
    but the writer's single PUT sets it) it is botocore's own S3 signer."""

    def payload(self, request: Any) -> str:
        """The known sha256 when the request carries it and signs its payload."""
        known = request.headers.get(_SHA256_HEADER)
        signs: bool = self._should_sha256_sign_payload(request)  # type: ignore[attr-defined]
        if known is not None and signs:
            return str(known)
        return str(super().payload(request))


def _choose_known_payload_signer(signature_version: str, **_: Any) -> str | None:
    """`choose-signer` hook of PutObject on the payload-signing client."""
    return KNOWN_PAYLOAD_SIGNER if signature_version == "s3v4" else None


def use_known_payload_signer(client: S3Client) -> None:
    """Make `client`'s PutObject sign with KnownPayloadAuth (registered with botocore once)."""
    # botocore finds signers by name in this table; adding ours is idempotent.
    botocore.auth.AUTH_TYPE_MAPS.setdefault(KNOWN_PAYLOAD_SIGNER, KnownPayloadAuth)
    # It answers a signer's name, which the stubs' handler type does not foresee.
    chooser: Any = _choose_known_payload_signer
    client.meta.events.register("choose-signer.s3.PutObject", chooser)
