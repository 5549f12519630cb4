"""Redaction's gates: a pattern skipped for text without its needle changes no output, ever."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pdpj_async import logs

# Pieces a generated text is made of: every pattern's needles in both cases, secret shapes,
# base64 runs of every length around 40, separators that end or join a run.
FRAGMENTS = [
    "pdpj_", "PDPJ_", "whsec_", "Bearer ", "BEARER\t", "eyJ", "EYJ", ".", "?", "&", "=",
    "sig=", "SIG=", "X-Amz-Signature=", "x-amz-credential=", "token=", "Access_Token=",
    "api_key=", "KEY=", "v1,", "V1,", "://", "postgresql://u:", "@", "/", ":", " ", "\n", "'",
    '"', ",", "password", "PASSWORD: ", "aws_secret_access_key=", "AWS_SESSION_TOKEN='",
    "secret_access_key\"=", "a", "Z", "9", "+", "-", "_", "ç", "\x00",
]  # fmt: skip
RUNS = st.integers(min_value=1, max_value=48).flatmap(
    lambda n: st.text(alphabet="aZ09+/xQ", min_size=n, max_size=n)
)
TEXTS = st.lists(st.one_of(st.sampled_from(FRAGMENTS), RUNS), max_size=30).map("".join)


def every_pattern(text: str) -> str:
    """What redact_text gave before the gates: every pattern over the whole text."""
    for pattern, replacement, _gate in logs._SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


@settings(max_examples=3000, deadline=None)
@given(TEXTS)
def test_gated_redaction_gives_exactly_what_every_pattern_gives(text: str) -> None:
    assert logs.redact_text(text) == every_pattern(text)


def test_secrets_in_upper_case_settings_and_long_log_lines_are_still_redacted() -> None:
    aws = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    line = (
        '{"event": "s3_error", "note": "AWS_SECRET_ACCESS_KEY=' + aws + '", "url": '
        '"postgresql://pdpj:hunter2@db/pdpj", "hdr": "BEARER abc.def", "raw": "' + aws + '"}'
    )
    redacted = logs.redact_text(line)
    assert aws not in redacted and "hunter2" not in redacted and "abc.def" not in redacted
    assert redacted.count(logs.REDACTED) == 4


def test_a_line_without_any_secret_shape_comes_back_as_the_same_object() -> None:
    line = '{"event": "document_available", "sha256": "' + "ab12" * 16 + '", "bytes": 60000}'
    assert logs.redact_text(line) is line
