"""The text of each available document: fetched from PDPJ or extracted, stored and indexed.

Its own queue kind (TEXT_KIND), enqueued in the transaction that makes a document available.
"""

from __future__ import annotations

# The queue kind of text work; its ref is the document id (pdpj.documents.id).
TEXT_KIND = "text"
# Text rows are claimed after the downloads a client waits for (priority 0) and before the
# refreshes of followed processes (watches.REFRESH_PRIORITY, -10): a document reaches its
# client first, its text (CPU, and a second PDPJ request) follows once no requested download
# is waiting. Shared worker slots otherwise went to text rows in the middle of a requested
# process's downloads (e2e: 600 of them in the 25 s to the last webhook).
TEXT_PRIORITY = -5
# The name of a document's text beside its binary.
TEXT_NAME = "text.txt"


def text_key(binary_key: str) -> str:
    """`…/{uuid}/text.txt` beside the binary (never the binary's own key)."""
    folder, _, name = binary_key.rpartition("/")
    return f"{folder}/{'text.extracted.txt' if name == TEXT_NAME else TEXT_NAME}"
