"""Table names: which are broadsheet's own, and how to quote any of them."""

from __future__ import annotations

# Tables broadsheet keeps in data.db. Names starting with these prefixes can
# never be published, whatever _public_tables says.
INTERNAL_PREFIXES = ("_public_", "sqlite_")

PUBLIC_TABLES = "_public_tables"
# Replicated too: the instance's and the public tables' titles, licenses, sources.
PUBLIC_METADATA = "_public_metadata"
# Replicated too: the saved queries that compile against the public copy.
PUBLIC_QUERIES = "_public_queries"
# Replicated too: one row, the LiteFS TXID of public.db that the publisher's
# transaction which wrote it became. A read node compares it with the TXID
# its LiteFS reports: LiteFS reports a TXID a moment before SQLite readers
# can see it (it sets the position, then rewrites the shared-memory index),
# and a response made in that moment would be old data under the new TXID.
PUBLIC_TXID = "_public_txid"


def is_internal(name: str) -> bool:
    return name.lower().startswith(INTERNAL_PREFIXES)


def quote(identifier: str) -> str:
    """Quote an SQL identifier the way sqlite-utils does: double quotes, with
    embedded double quotes doubled. Safe for any string SQLite accepts."""
    return '"' + identifier.replace('"', '""') + '"'


def literal(value: str) -> str:
    """An SQL string literal (for trigger bodies, where parameters cannot go)."""
    return "'" + value.replace("'", "''") + "'"
