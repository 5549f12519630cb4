"""Webhooks: the outbox, signatures, the SSRF guard, the guarded HTTP client and the sender."""
