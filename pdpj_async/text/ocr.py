"""OCR of a PDF page with Tesseract (Portuguese), when the binary and its language are there."""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

# 300 dpi: what Tesseract is tuned for.
_SCALE = 300 / 72
_TIMEOUT_S = 120.0


@functools.cache
def available() -> bool:
    """True when `tesseract` is on PATH with the Portuguese language data."""
    binary = shutil.which("tesseract")
    if binary is None:
        return False
    try:
        # Our own fixed arguments: no input reaches the command line.
        out = subprocess.run(  # noqa: S603
            [binary, "--list-langs"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "por" in out.stdout.split()


def page_text(page: Any) -> str:
    """The text Tesseract reads on a pypdfium2 page ('' without Tesseract)."""
    binary = shutil.which("tesseract")
    if binary is None or not available():
        return ""
    image = page.render(scale=_SCALE, grayscale=True).to_pil()
    with tempfile.TemporaryDirectory(prefix="pdpj-ocr-") as tmp:
        png = Path(tmp) / "page.png"
        image.save(png)
        out = subprocess.run(  # noqa: S603 (fixed arguments, a file of ours)
            [binary, str(png), "stdout", "-l", "por"],
            capture_output=True,
            timeout=_TIMEOUT_S,
            check=False,
        )
    return out.stdout.decode("utf-8", errors="replace")
