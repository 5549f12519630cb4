"""CNJ numbers: the contract's examples parse; each wrong number is refused with its reason."""

from __future__ import annotations

import pytest

from pdpj_async import cnj
from pdpj_async.errors import InvalidProcessNumber

VALID = ["1011745-77.2025.8.11.0041", "0801234-38.2024.8.26.0100", "5001122-68.2023.4.03.6100"]


@pytest.mark.parametrize("masked", VALID)
def test_contract_examples_parse_in_both_forms(masked: str) -> None:
    bare = masked.replace("-", "").replace(".", "")
    assert cnj.parse(masked) == cnj.parse(bare)
    number = cnj.parse(bare)
    assert number.digits == bare
    assert number.masked == masked


def test_segments_are_exposed() -> None:
    number = cnj.parse("0801234-38.2024.8.26.0100")
    assert (number.sequence, number.check_digits, number.year) == ("0801234", "38", "2024")
    assert (number.segment, number.court, number.origin) == ("8", "26", "0100")
    assert number.segment_name == "Justiça Estadual"


def test_surrounding_whitespace_is_ignored() -> None:
    assert cnj.parse("  08012343820248260100\n").digits == "08012343820248260100"


def test_wrong_check_digits_say_which_are_expected() -> None:
    with pytest.raises(InvalidProcessNumber) as info:
        cnj.parse("0801234-39.2024.8.26.0100")
    assert info.value.reason == "check_digits"
    assert "expected 38" in str(info.value)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("123", "length"),
        ("080123438202482601000", "length"),
        ("0801234382024826010", "length"),
        ("08012a43820248260100", "characters"),
        ("0801234-38.2024.8.26.01OO", "characters"),
        ("0801234/38.2024.8.26.0100", "characters"),
        ("0801234.38-2024.8.26.0100", "format"),
        ("x" * 500, "length"),
        ("٠٨٠١٢٣٤٣٨٢٠٢٤٨٢٦٠١٠٠", "characters"),
    ],
)
def test_malformed_numbers_are_refused_with_their_reason(text: str, reason: str) -> None:
    with pytest.raises(InvalidProcessNumber) as info:
        cnj.parse(text)
    assert info.value.reason == reason


def test_expected_check_digits_round_trip() -> None:
    dd = cnj.expected_check_digits("0801234", "2024", "8", "26", "0100")
    assert dd == "38"
    assert cnj.is_valid(f"0801234{dd}20248260100")
    assert not cnj.is_valid("08012343920248260100")


# Digits of other scripts that str.isdigit() and int() accept as numbers.
FOREIGN_DIGITS = {
    "arabic-indic": "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669",
    "fullwidth": "\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19",
    "devanagari": "\u0966\u0967\u0968\u0969\u096a\u096b\u096c\u096d\u096e\u096f",
}


@pytest.mark.parametrize("script", list(FOREIGN_DIGITS))
@pytest.mark.parametrize("form", ["masked", "bare", "masked, check digits in ASCII"])
def test_digits_of_other_scripts_are_refused_in_every_form(script: str, form: str) -> None:
    table = str.maketrans("0123456789", FOREIGN_DIGITS[script])
    masked = "0801234-38.2024.8.26.0100"
    text = {
        "masked": masked.translate(table),
        "bare": masked.replace("-", "").replace(".", "").translate(table),
        # The check digits match as text only in ASCII: this one used to parse.
        "masked, check digits in ASCII": masked[:8].translate(table)
        + "38"
        + masked[10:].translate(table),
    }[form]
    with pytest.raises(InvalidProcessNumber) as info:
        cnj.parse(text)
    assert info.value.reason == "characters"
    assert "0-9" in str(info.value)


def test_composed_numbers_are_valid_and_keep_their_parts() -> None:
    digits = cnj.compose(801234, "2024", "8", "26", "0100")
    assert digits == "08012343820248260100"
    assert cnj.parse(digits).masked == "0801234-38.2024.8.26.0100"
