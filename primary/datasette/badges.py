"""A "public" or "partial" badge beside each public table's name."""

from __future__ import annotations

import json

from datasette.utils import tilde_encode

from .data_db import data_db_name, public_specs

BADGE_SCRIPT = """
(() => {
  const badges = %s;
  const style = document.createElement("style");
  // Specific enough to win over Datasette's own heading link styles.
  style.textContent = "h1 a.broadsheet-badge, .db-table h3 a.broadsheet-badge, li a.broadsheet-badge {"
    + " font-size: 0.6em; font-weight: normal; padding: 0.1em 0.6em; margin-left: 0.5em; border-radius: 0.8em;"
    + " vertical-align: middle; text-decoration: none; color: #fff; background: #2a7d3f }"
    + " h1 a.broadsheet-partial, .db-table h3 a.broadsheet-partial, li a.broadsheet-partial { background: #b36200 }";
  document.head.appendChild(style);
  const badge = (b) => {
    const a = document.createElement("a");
    a.className = "broadsheet-badge broadsheet-" + b.label;
    a.textContent = b.label;
    a.title = b.title;
    a.href = b.href;
    return a;
  };
  const onTablePage = %s;
  if (onTablePage) {
    const h1 = document.querySelector(".page-header h1");
    if (h1 && badges[onTablePage]) h1.append(badge(badges[onTablePage]));
    return;
  }
  document.querySelectorAll(".db-table h3 > a:first-child, #views + ul li > a:first-child").forEach((a) => {
    if (Object.hasOwn(badges, a.textContent)) a.after(badge(badges[a.textContent]));
  });
})();
"""


def body_script(datasette, database, table, view_name):
    """A "public" or "partial" badge beside each public table's name on the
    team's database page, and in a public table's page header (Datasette's
    database.html has no per-table block a template could extend)."""
    if database != data_db_name() or view_name not in ("database", "table"):
        return None
    return _badges(datasette, database, table, view_name)


async def _badges(datasette, database: str, table: str | None, view_name: str) -> str:
    specs = await public_specs(datasette)
    if view_name == "table" and table not in specs:
        return ""  # (an awaited None would become the script "None")
    badges = {
        name: {
            "label": "public" if spec.whole else "partial",
            "title": f"Public: {spec.describe()}",
            "href": datasette.urls.path(f"/-/broadsheet/visibility/{tilde_encode(database)}/{tilde_encode(name)}"),
        }
        for name, spec in specs.items()
        if view_name == "database" or name == table
    }
    return BADGE_SCRIPT % (_script_json(badges), _script_json(table if view_name == "table" else None))


def _script_json(value) -> str:
    """JSON that is safe inside a <script> element."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
