"""Datasette's own metadata files, read for what broadsheet shows: the
formats Datasette 1.0a41 reads (``metadata.yml`` / ``metadata.json``, and
the metadata keys of ``datasette.yaml``), turned into the instance's and
each adopted table's metadata rows (public_metadata.py) and column
descriptions.

Nothing in a file is dropped silently: whatever broadsheet does not use
(``units``, ``sort``, ``facets``, ``plugins``, ``allow``, saved queries,
settings, a database no adopted file is named for, …) is listed in
``ignored`` by its dotted path, and the whole document is kept in data.db
with the adoption that read it (``_public_adoptions``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import yaml

from .errors import PublishError
from .public_metadata import METADATA_FIELDS, check_metadata


class MetadataFileError(PublishError):
    """A metadata file that is not JSON or YAML, or not a mapping."""


@dataclass
class AdoptedMetadata:
    """What broadsheet takes from a metadata document for the databases
    being adopted: the instance's fields, each table's fields (with
    ``columns``: column name -> description), and the paths it leaves."""

    instance: dict = field(default_factory=dict)
    tables: dict[str, dict] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)


def parse_document(text: str, name: str = "metadata") -> dict:
    """A metadata file's contents (JSON or YAML, as Datasette's
    ``parse_metadata`` reads them) as a mapping; MetadataFileError if not."""
    try:
        document = json.loads(text)
    except ValueError:
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise MetadataFileError(f"{name} is not valid JSON or YAML: {' '.join(str(exc).split())}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise MetadataFileError(f"{name} must be a mapping of metadata keys (as Datasette's metadata.yml is)")
    try:
        json.dumps(document)
    except (TypeError, ValueError):
        raise MetadataFileError(f"{name} holds values JSON cannot: dates or other YAML types") from None
    return document


def _fields(values: dict, path: str, ignored: list[str], extra_used: tuple[str, ...] = ()) -> dict:
    """The metadata fields broadsheet shows, from one level of the document;
    the rest of that level's keys go to ``ignored``."""
    taken = {}
    for key, value in values.items():
        if key in METADATA_FIELDS and (value is None or isinstance(value, str)):
            taken[key] = value
        elif key not in extra_used:
            ignored.append(f"{path}{key}")
    try:
        return check_metadata(taken)
    except PublishError as exc:
        raise MetadataFileError(f"{path.rstrip('.') or 'top level'}: {exc.message}") from None


def read(document: dict, databases: dict[str, list[str]]) -> AdoptedMetadata:
    """Take from ``document`` what belongs to the ``databases`` being
    adopted (database name, the file's stem as ``datasette x.db`` names it
    -> its tables and views). The databases' own titles and licences are
    the instance's (public.db is one database) unless the top level sets
    them."""
    found = AdoptedMetadata()
    found.instance = {k: v for k, v in _fields(document, "", found.ignored, ("databases",)).items() if v}
    entries = document.get("databases") or {}
    if not isinstance(entries, dict):
        found.ignored.append("databases")
        entries = {}
    for db_name, entry in entries.items():
        path = f"databases.{db_name}."
        if db_name not in databases or not isinstance(entry, dict):
            found.ignored.append(path.rstrip("."))
            continue
        for key, value in _fields(entry, path, found.ignored, ("tables",)).items():
            if value and key in found.instance:
                found.ignored.append(f"{path}{key}")  # the top level's wins
            elif value:
                found.instance[key] = value
        tables = entry.get("tables") or {}
        if not isinstance(tables, dict):
            found.ignored.append(f"{path}tables")
            continue
        for table, values in tables.items():
            tpath = f"{path}tables.{table}."
            if table not in databases[db_name] or not isinstance(values, dict):
                found.ignored.append(tpath.rstrip("."))
                continue
            row = {k: v for k, v in _fields(values, tpath, found.ignored, ("columns",)).items() if v}
            columns = values.get("columns")
            if isinstance(columns, dict):
                described = {}
                for column, description in columns.items():
                    if isinstance(description, str) and description:
                        described[str(column)] = description
                    else:
                        found.ignored.append(f"{tpath}columns.{column}")
                if described:
                    row["columns"] = described
            elif columns is not None:
                found.ignored.append(f"{tpath}columns")
            if row:
                found.tables[table] = row
    return found
