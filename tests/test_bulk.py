"""Bulk bodies: every line gets a result, with the reason a single request would give."""

from __future__ import annotations

import msgspec
import pytest
from aiohttp import web

from pdpj_async import cnj
from pdpj_async.errors import InvalidProcessNumber, InvalidRequest
from pdpj_async.server import bulk_input
from pdpj_async.server.bulk_input import MAX_NUMBERS, parse_csv, parse_json

A = "0000001-73.2023.8.26.0100"
B = "0000002-58.2023.8.26.0100"
A_BARE = "00000017320238260100"
BAD_CHECK = "0000001-00.2023.8.26.0100"


def _single_request_reason(text: str) -> tuple[str, str]:
    """What GET /api/v1/processes/{text} reports (its handler calls cnj.parse)."""
    with pytest.raises(InvalidProcessNumber) as caught:
        cnj.parse(text)
    return caught.value.reason, caught.value.detail


def test_a_json_array_gives_accepted_invalid_and_duplicate_lines_in_order() -> None:
    lines = parse_json(msgspec.json.encode([A, BAD_CHECK, A_BARE, B, "", 42]))

    assert [ln.line for ln in lines] == [1, 2, 3, 4, 5, 6]
    assert [ln.status for ln in lines] == [
        "accepted",
        "invalid",
        "duplicate",
        "accepted",
        "invalid",
        "invalid",
    ]
    assert lines[0].number == A_BARE and lines[3].number == "00000025820238260100"
    # The bare form of a number given masked earlier is the same number.
    assert lines[2].duplicate_of == 1 and lines[2].number == A_BARE
    assert (lines[1].reason, lines[1].detail) == _single_request_reason(BAD_CHECK)
    assert (lines[4].reason, lines[4].detail) == _single_request_reason("")
    assert lines[5].reason == "type" and lines[5].input == "42"
    assert [n.digits for n in bulk_input.accepted(lines)] == [A_BARE, "00000025820238260100"]


@pytest.mark.parametrize(
    "text",
    [
        "0000001-7X.2023.8.26.0100",
        "123",
        "0000001-73.2023.0.26.0100",
        "0000001 73 2023 8 26 0100 extra",
        "٠٠٠٠٠٠١٧٣٢٠٢٣٨٢٦٠١٠٠",
    ],
)
def test_an_invalid_line_carries_the_reason_and_detail_of_a_single_request(text: str) -> None:
    (line,) = parse_json(msgspec.json.encode([text]))

    assert line.status == "invalid"
    assert (line.reason, line.detail) == _single_request_reason(text)
    assert line.input == text


def test_a_csv_body_skips_a_header_and_blank_lines_and_numbers_lines_as_an_editor_does() -> None:
    body = f'\ufeffnumero\r\n{A}\r\n\r\n"{B}"\r\n  {A_BARE}  \r\nprocesso\r\n'

    lines = parse_csv(body)

    assert [(ln.line, ln.status) for ln in lines] == [
        (2, "accepted"),
        (4, "accepted"),
        (5, "duplicate"),
        (6, "invalid"),  # a word after the first line is a line, not a header
    ]
    assert lines[1].input == B and lines[2].duplicate_of == 2
    assert lines[3].reason == _single_request_reason("processo")[0]


def test_a_csv_body_without_a_header_keeps_its_first_line() -> None:
    lines = parse_csv(f"{A}\n{B}")

    assert [(ln.line, ln.number) for ln in lines] == [
        (1, A_BARE),
        (2, "00000025820238260100"),
    ]


def test_more_than_ten_thousand_numbers_are_refused_with_413_naming_the_limit() -> None:
    with pytest.raises(web.HTTPRequestEntityTooLarge) as caught:
        parse_csv("\n".join([A] * (MAX_NUMBERS + 1)))

    assert caught.value.status == 413
    assert str(MAX_NUMBERS) in caught.value.text and str(MAX_NUMBERS + 1) in caught.value.text


def test_exactly_ten_thousand_numbers_are_read() -> None:
    lines = parse_json(msgspec.json.encode([A] * MAX_NUMBERS))

    assert len(lines) == MAX_NUMBERS
    assert sum(ln.status == "duplicate" for ln in lines) == MAX_NUMBERS - 1


@pytest.mark.parametrize("body", [b"", b"{}", b'{"numbers": []}', b"[", b"[]"])
def test_a_json_body_that_is_not_a_non_empty_array_is_a_bad_request(body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        parse_json(body)


def test_a_csv_body_of_only_a_header_and_blank_lines_is_a_bad_request() -> None:
    with pytest.raises(InvalidRequest, match="no process numbers"):
        parse_csv("number\r\n\r\n  \r\n")


def test_a_very_long_line_is_echoed_cut_short() -> None:
    (line,) = parse_csv("9" * 5000)

    assert line.status == "invalid" and len(line.input) == bulk_input.MAX_ECHO
