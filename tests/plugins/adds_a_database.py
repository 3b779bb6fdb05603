"""A careless read-node plugin: at startup it serves one more database file
beside public.db (a read node must refuse to start with it)."""

import os
import sqlite3

from datasette import hookimpl
from datasette.database import Database


@hookimpl
def startup(datasette):
    path = os.path.join(os.path.dirname(os.environ["BROADSHEET_PUBLIC_DB"]), "extra.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE IF NOT EXISTS notes (body TEXT)")
    conn.close()
    datasette.add_database(Database(datasette, path=path), name="extra")
