"""CNJ process numbers (Resolução CNJ 65/2008): parse, verify the mod 97-10 check digits, format."""

from __future__ import annotations

import re

import msgspec

from .errors import InvalidProcessNumber

SEGMENTS = {
    "1": "STF",
    "2": "CNJ",
    "3": "STJ",
    "4": "Justiça Federal",
    "5": "Justiça do Trabalho",
    "6": "Justiça Eleitoral",
    "7": "Justiça Militar da União",
    "8": "Justiça Estadual",
    "9": "Justiça Militar Estadual",
}

# [0-9], not \d: \d also matches Arabic-Indic, fullwidth and other Unicode digits, which int()
# reads as numbers, so such a number would pass its check and reach PDPJ and the database.
_MASKED = re.compile(r"^([0-9]{7})-([0-9]{2})\.([0-9]{4})\.([0-9])\.([0-9]{2})\.([0-9]{4})$")
_SEPARATORS = re.compile(r"[.\-\s]")
MAX_INPUT = 64


class ProcessNumber(msgspec.Struct, frozen=True):
    """A valid CNJ number, kept as its 20 bare digits."""

    digits: str

    @property
    def sequence(self) -> str:
        return self.digits[0:7]

    @property
    def check_digits(self) -> str:
        return self.digits[7:9]

    @property
    def year(self) -> str:
        return self.digits[9:13]

    @property
    def segment(self) -> str:
        return self.digits[13]

    @property
    def court(self) -> str:
        return self.digits[14:16]

    @property
    def origin(self) -> str:
        return self.digits[16:20]

    @property
    def segment_name(self) -> str:
        return SEGMENTS[self.segment]

    @property
    def masked(self) -> str:
        d = self.digits
        return f"{d[0:7]}-{d[7:9]}.{d[9:13]}.{d[13]}.{d[14:16]}.{d[16:20]}"

    def __str__(self) -> str:
        return self.digits


def expected_check_digits(sequence: str, year: str, segment: str, court: str, origin: str) -> str:
    """The two check digits for the other 18 digits (ISO 7064 mod 97-10)."""
    base = int(sequence + year + segment + court + origin + "00")
    return f"{98 - base % 97:02d}"


def compose(sequence: int | str, year: str, segment: str, court: str, origin: str) -> str:
    """The 20 digits of a valid number: the parts, with their check digits after the sequence."""
    seq = sequence if isinstance(sequence, str) else f"{sequence:07d}"
    return (
        seq
        + expected_check_digits(seq, year, segment, court, origin)
        + year
        + segment
        + court
        + origin
    )


def parse(text: str) -> ProcessNumber:
    """Parse the bare or the masked form; raises InvalidProcessNumber saying what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidProcessNumber("empty", "the process number is empty")
    raw = text.strip()
    if len(raw) > MAX_INPUT:
        raise InvalidProcessNumber(
            "length", f"the process number is {len(raw)} characters long; expected 20 digits"
        )
    masked = _MASKED.match(raw)
    if masked:
        digits = "".join(masked.groups())
    else:
        digits = _SEPARATORS.sub("", raw)
        bad = sorted({c for c in digits if c not in "0123456789"})
        if bad:
            shown = ", ".join(repr(c) for c in bad[:5])
            raise InvalidProcessNumber(
                "characters", f"the process number has characters other than 0-9: {shown}"
            )
        if len(digits) != 20:
            raise InvalidProcessNumber(
                "length", f"the process number has {len(digits)} digits; expected 20"
            )
        if digits != raw and not (raw.isascii() and raw.isdigit()):
            raise InvalidProcessNumber(
                "format", "expected 20 digits or the mask NNNNNNN-DD.AAAA.J.TR.OOOO"
            )
    number = ProcessNumber(digits)
    if number.segment == "0":
        raise InvalidProcessNumber("segment", "the judicial segment (J) must be 1 to 9, not 0")
    expected = expected_check_digits(
        number.sequence, number.year, number.segment, number.court, number.origin
    )
    if expected != number.check_digits:
        raise InvalidProcessNumber(
            "check_digits",
            f"the check digits are {number.check_digits}; expected {expected} "
            f"({number.sequence}-{expected}.{number.year}.{number.segment}."
            f"{number.court}.{number.origin})",
        )
    return number


def is_valid(text: str) -> bool:
    """True when `text` parses as a CNJ number."""
    try:
        parse(text)
    except InvalidProcessNumber:
        return False
    return True
