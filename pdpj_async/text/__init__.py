"""The text of each available document: fetched from PDPJ or extracted, stored and indexed.

Its own queue kind (TEXT_KIND), enqueued in the transaction that makes a document available.
"""

from __future__ import annotations

# The queue kind of text work; its ref is the document id (pdpj.documents.id).
TEXT_KIND = "text"
