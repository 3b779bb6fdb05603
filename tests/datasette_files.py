"""A database and metadata.yml as a Datasette user has them: made by
sqlite-utils (tables, a view, a full-text table with its content, a table
with a compound primary key, a trigger the team wrote), with a private
marker in one table, and Datasette's metadata format (instance, database,
table and column levels, with keys broadsheet does not use)."""

from __future__ import annotations

from pathlib import Path

import sqlite_utils

SENTINEL = "SENTINEL-adopted-private-7f3a9c"

METADATA_YML = """\
title: Council budgets
license: CC BY 4.0
license_url: https://creativecommons.org/licenses/by/4.0/
extra_css_urls: [/static/site.css]
databases:
  mydata:
    source: Finance office
    source_url: https://example.org/finance
    tables:
      budget:
        title: Budget lines
        description: Every line of the adopted budget
        sort_desc: amount
        columns:
          amount: Pounds, nominal
          department: The spending department
      staff:
        description: Private staff list
        hidden: true
  elsewhere:
    title: Not adopted
"""


def make_database(path: Path, rows: int = 40) -> Path:
    """``mydata.db``: ``budget`` (id pk, with an FTS table over ``item``),
    ``allocations`` (compound primary key), ``staff`` (the private marker),
    a view and a trigger."""
    db = sqlite_utils.Database(path)
    db["budget"].insert_all(
        ({"id": i, "department": f"dept {i % 4}", "item": f"line item {i} paperclips" if i % 5 == 0 else f"line item {i}",
          "amount": i * 100} for i in range(1, rows + 1)),
        pk="id",
    )
    db["budget"].create_index(["department"])
    db["budget"].enable_fts(["item"], create_triggers=True)
    db["allocations"].insert_all(
        ({"year": 2020 + i % 3, "department": f"dept {i % 4}", "share": i / 10} for i in range(12)),
        pk=("year", "department"),
    )
    db["staff"].insert_all([{"id": 1, "name": "Ada", "note": SENTINEL}, {"id": 2, "name": "Bo", "note": "ok"}], pk="id")
    db.create_view("by_department", "select department, sum(amount) as total from budget group by department")
    db.execute(
        "CREATE TRIGGER staff_touched AFTER UPDATE ON staff BEGIN"
        " UPDATE staff SET name = new.name WHERE id = new.id AND 0; END"
    )
    db.close()
    return path


def make_metadata(path: Path) -> Path:
    path.write_text(METADATA_YML)
    return path
