"""The text of each available document: fetched from PDPJ or extracted, stored and indexed.

Its own queue kind (TEXT_KIND), enqueued in the transaction that makes a document available.
"""

from __future__ import annotations

# The queue kind of text work; its ref is the document id (pdpj.documents.id).
TEXT_KIND = "text"
# The name of a document's text beside its binary.
TEXT_NAME = "text.txt"


def text_key(binary_key: str) -> str:
    """`…/{uuid}/text.txt` beside the binary (never the binary's own key)."""
    folder, _, name = binary_key.rpartition("/")
    return f"{folder}/{'text.extracted.txt' if name == TEXT_NAME else TEXT_NAME}"
