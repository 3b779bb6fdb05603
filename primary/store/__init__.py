"""data.db's publish state: what is public and how, who flipped it, the
public metadata and the saved queries, kept in data.db itself so that data
and publish state are one transactional snapshot.

Every module here works on a connection to data.db (or, for the
publisher, public.db with data.db attached as ``src``); none of them knows
about the publisher, the control plane or Datasette.

- ``migrations``: the schema of the ``_public_*`` tables, and bringing an
  older data.db up to it
- ``catalogue``: what tables, views and full-text tables a database holds
- ``view_analysis``: what a view reads
- ``spec``: the publish spec; ``projection``: a table as its spec publishes
  it; ``column_ids``: which column is which across renames
- ``visibility``: making a table public or private, failing closed;
  ``listing``: each table with the spec it is public under
- ``audit_log``, ``public_metadata``, ``queries`` (saved queries),
  ``preview`` (what a flip would expose)
- ``errors``: why a request cannot be carried out

Callers write ``from primary import store`` and ``store.set_public(...)``.
"""

from broadsheet.sqlite import connect, immediate

from . import column_ids, preview, projection, queries, schedule, spec
from .audit_log import AUDIT_COLUMNS, audit, audit_entries, audit_txids, now
from .catalogue import fts_companions, shadow_tables, user_tables, views, virtual_tables
from .errors import DependsOnPrivate, InternalTable, PublishError, TableNotFound
from .migrations import ensure_schema, migrate
from .preview import Preview
from .projection import Projection, TableShape
from .public_metadata import COLUMNS, INSTANCE, METADATA_FIELDS, check_metadata, metadata, set_metadata, write_metadata
from .spec import PublishSpec, SpecError
from .view_analysis import BrokenView, private_reads, view_columns, view_reads
from .visibility import (
    REBUILT_ACTOR,
    REBUILT_REASON,
    Flip,
    check_name,
    check_publishable,
    check_spec,
    fail_closed,
    misfit,
    public_specs,
    public_tables,
    set_public,
    spec_columns,
)

__all__ = [
    "AUDIT_COLUMNS", "BrokenView", "COLUMNS", "DependsOnPrivate", "Flip", "INSTANCE", "InternalTable", "METADATA_FIELDS",
    "Preview", "Projection", "PublishError", "PublishSpec", "REBUILT_ACTOR", "REBUILT_REASON", "SpecError",
    "TableNotFound", "TableShape", "audit", "audit_entries", "audit_txids", "check_metadata", "check_name",
    "check_publishable", "check_spec", "column_ids", "connect", "ensure_schema", "fail_closed", "fts_companions",
    "immediate", "metadata", "migrate", "misfit", "now", "preview", "private_reads", "projection", "public_specs",
    "public_tables", "queries", "schedule", "set_metadata", "set_public", "write_metadata", "shadow_tables", "spec", "spec_columns",
    "user_tables", "view_columns", "view_reads", "views", "virtual_tables"
]
