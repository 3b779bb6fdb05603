"""A randomized, seeded differential test of partial publishing on a real
cluster (tests/test_differential.py runs a few hundred steps in the suite;
``scripts/differential --seed N --steps M`` as many as asked, on a cluster
of its own).

Each step is what a team member might do: write rows (NULLs too), publish a
table with a random spec (whole, a column list, all columns but some, a row
filter), make it private, add, rename, drop columns, swap two columns' names,
rename one and add another under its old name, drop one and add it again,
rename through Datasette's alter API, rebuild with sqlite-utils' transform,
publish a view over a partial table, drop a table, create it again. After
each step every read node must serve exactly what this module's own model
says: for a public table ``SELECT <published columns> FROM t WHERE
<filter>``, computed here with Python's sqlite3 on a copy of the team's
rows, and 403 for one the model says is private; the same for views. Now and
then (and at the end) no value that was never public may be in any byte of
any read node: files, LTX, the memory of LiteFS and Datasette.

The model knows which column is which (each has a uid, whatever it is
called), so it needs nothing of the publisher's code to say when a spec's
name has come to denote another column: it follows the README's rule.
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
import time
from dataclasses import dataclass, field

import httpx
import sqlite_utils

from conftest import file_bytes, settle, wait_until

TABLES = ("dx_a", "dx_b", "dx_c")
# Every value written is a token: dx, seven digits and a check letter. The
# letter makes a token unforgeable by chance: freed memory in a read node's
# Datasette holds public tokens whose last bytes an allocator's pointer has
# overwritten (a pointer's low byte can be an ASCII digit), which would
# otherwise read as another, never-public token.
TOKEN = re.compile(rb"dx\d{7}[a-z]")


def with_check(digits: str) -> str:
    return digits + chr(97 + sum(map(int, digits[2:])) * 7 % 26)


def tokens(found) -> set[bytes]:
    """The matches of TOKEN that are whole tokens (their check letter right)."""
    return {m for m in found if with_check(m[:-1].decode()).encode() == m}
TYPES = ("TEXT", "BLOB", "VARCHAR(20)")


def fold(name: str) -> str:
    return name.lower()


@dataclass
class Col:
    uid: int
    name: str
    type: str


@dataclass
class Record:
    """A publish as the model remembers it: the spec, the table's columns
    (uid, name) then, and the names the spec depends on."""

    spec: dict
    columns: list[tuple[int, str]]
    named: set[str]


@dataclass
class Table:
    name: str
    columns: list[Col] = field(default_factory=list)
    dead: dict[int, Col] = field(default_factory=dict)  # uid -> the column as it was dropped
    record: Record | None = None
    exists: bool = False

    def col(self, name: str) -> Col | None:
        return next((c for c in self.columns if fold(c.name) == fold(name)), None)

    def last_name(self, uid: int) -> str | None:
        alive = next((c for c in self.columns if c.uid == uid), None)
        return (alive or self.dead.get(uid) or Col(0, "", "")).name or None

    def moved(self) -> bool:
        """Whether a name the spec depends on no longer denotes the column it
        did when published: the column is gone or called otherwise, or
        another published column answers to its name now (a dropped one by
        its last name)."""
        record = self.record
        for name in record.named:
            uid = next(u for u, n in record.columns if fold(n) == fold(name))
            alive = next((c for c in self.columns if c.uid == uid), None)
            if alive is None or fold(alive.name) != fold(name):
                return True
            if any(u != uid and fold(self.last_name(u) or "") == fold(name) for u, _ in record.columns):
                return True
        return False

    def published_columns(self) -> list[str]:
        spec = self.record.spec
        names = [c.name for c in self.columns]
        if "columns" in spec:
            names = [n for n in names if n in spec["columns"]]
        return [n for n in names if n not in spec.get("exclude_columns", [])]


@dataclass
class View:
    name: str
    listed: bool = True


class Differential:
    def __init__(self, cluster, control, token: str, seed: int, say=print):
        self.cluster, self.control, self.token, self.say = cluster, control, token, say
        self.seed = seed
        self.rng = random.Random(seed)
        self.db = sqlite3.connect(cluster.primary.data_db, timeout=10, isolation_level=None)
        self.db.execute("PRAGMA busy_timeout = 10000")
        self.tables = {name: Table(name) for name in TABLES}
        self.views: dict[str, View] = {}
        self.uids = 0
        self.values = 0
        self.names = 0
        self.public_values: set[bytes] = set()
        self.http = httpx.Client(timeout=10)
        self.steps = 0
        self.counts: dict[str, int] = {}
        self.origin: dict[bytes, str] = {}  # each value: where it was written

    def close(self) -> None:
        self.http.close()
        self.db.close()

    def clean_up(self) -> None:
        """Drop every view and table of the run (a broken view left in
        data.db would make SQLite refuse every later RENAME in it)."""
        for (view,) in self.db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'view' AND substr(name, 1, 4) = 'dx_v'"
        ).fetchall():
            self.run(f'DROP VIEW "{view}"')
        for t in self.tables.values():
            if t.exists:
                self.run(f'DROP TABLE "{t.name}"')
        settle(self.cluster, timeout=15)

    # -- fresh things --------------------------------------------------------
    def value(self, where: str = "") -> str | None:
        if self.rng.random() < 0.12:
            return None
        self.values += 1
        token = with_check(f"dx{self.rng.randrange(10)}{self.values:06d}")
        self.origin[token.encode()] = f"step {self.steps}, {where}"
        return token

    def fresh_name(self) -> str:
        self.names += 1
        return f"c{self.names}"

    def new_col(self, name: str, type_: str = "TEXT") -> Col:
        self.uids += 1
        return Col(self.uids, name, type_)

    # -- SQL on data.db, as a team member's script ---------------------------
    def run(self, *statements: str, params: list | None = None) -> bool:
        """One transaction; False (rolled back) if SQLite refused it (a
        column a view reads cannot be dropped, say)."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            for i, sql in enumerate(statements):
                self.db.execute(sql, (params or [()] * len(statements))[i])
            self.db.execute("COMMIT")
            return True
        except sqlite3.Error:
            self.db.execute("ROLLBACK")
            return False

    # -- steps ----------------------------------------------------------------
    def step(self) -> str:
        self.steps += 1
        existing = [t for t in self.tables.values() if t.exists]
        missing = [t for t in self.tables.values() if not t.exists]
        if missing and (not existing or self.rng.random() < 0.3):
            return self.create(self.rng.choice(missing))
        t = self.rng.choice(existing)
        kinds = [
            ("write", 30), ("publish", 16), ("unpublish", 3), ("add", 6), ("rename", 6), ("swap", 6),
            ("rename_then_add", 4), ("drop_then_add", 4), ("drop", 5), ("alter_api", 4), ("transform", 2),
            ("view", 5), ("drop_table", 1),
        ]
        kind = self.rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
        did = getattr(self, kind)(t)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return did

    def create(self, t: Table) -> str:
        t.columns = [self.new_col("id", "INTEGER")] + [self.new_col(self.fresh_name()) for _ in range(3)]
        t.dead, t.record, t.exists = {}, None, True
        defs = ", ".join(f'"{c.name}" {c.type}' + (" PRIMARY KEY" if i == 0 else "") for i, c in enumerate(t.columns))
        assert self.run(f'CREATE TABLE "{t.name}" ({defs})')
        for _ in range(6):
            self.insert(t)
        return f"create {t.name}"

    def insert(self, t: Table) -> None:
        names = [c.name for c in t.columns[1:]]
        values = [self.value(f"{t.name}.{n}") for n in names]
        cols = ", ".join(f'"{n}"' for n in names)
        self.run(f'INSERT INTO "{t.name}" ({cols}) VALUES ({", ".join("?" for _ in names)})', params=[values])

    def ids(self, t: Table) -> list[int]:
        return [r[0] for r in self.db.execute(f'SELECT "{t.columns[0].name}" FROM "{t.name}"')]

    def write(self, t: Table) -> str:
        ids = self.ids(t)
        what = self.rng.random()
        if what < 0.35 or not ids:
            for _ in range(self.rng.randint(1, 3)):
                self.insert(t)
            return f"insert into {t.name}"
        if what < 0.85 and len(t.columns) > 1:
            col = self.rng.choice(t.columns[1:])
            rid = self.rng.choice(ids)
            self.run(f'UPDATE "{t.name}" SET "{col.name}" = ? WHERE "{t.columns[0].name}" = ?', params=[(self.value(f"{t.name}.{col.name} (uid {col.uid}), row {rid}"), rid)])
            return f"update {t.name}.{col.name}"
        self.run(f'DELETE FROM "{t.name}" WHERE "{t.columns[0].name}" = ?', params=[(self.rng.choice(ids),)])
        return f"delete from {t.name}"

    def random_spec(self, t: Table) -> dict:
        key, others = t.columns[0].name, [c.name for c in t.columns[1:]]
        spec: dict = {}
        kind = self.rng.random()
        if kind < 0.4 and others:
            chosen = set(self.rng.sample(others, self.rng.randint(0, len(others))))
            spec["columns"] = [key] + [n for n in others if n in chosen]
        elif kind < 0.75 and others:
            chosen = set(self.rng.sample(others, self.rng.randint(1, len(others))))
            spec["exclude_columns"] = [n for n in others if n in chosen]
        if others and self.rng.random() < 0.5:
            spec["where"] = f"substr(\"{self.rng.choice(others)}\", 3, 1) < '5'"
        return spec

    def named(self, t: Table, spec: dict) -> set[str]:
        names = set(spec.get("columns", [])) | set(spec.get("exclude_columns", []))
        if "where" in spec:
            names.add(re.search(r'"([^"]+)"', spec["where"]).group(1))
        return names

    def publish(self, t: Table) -> str:
        spec = self.random_spec(t)
        self.control.publish(t.name, spec=spec)
        if t.record is None or t.record.spec != spec:  # the same spec again changes nothing
            t.record = Record(spec, [(c.uid, c.name) for c in t.columns], self.named(t, spec))
        return f"publish {t.name} {json.dumps(spec)}"

    def unpublish(self, t: Table) -> str:
        self.control.publish(t.name, public=False)
        t.record = None
        return f"unpublish {t.name}"

    def type_for(self, t: Table, name: str, dropped: Col | None = None) -> str:
        """A declared type for a column added under ``name``. Under the last
        name of a dropped column, another type than it had: a column dropped
        and added again with the very same definition, where nothing but
        earlier columns stands before it, is the one case a schema cannot
        tell from the column that was dropped (README, Known limits), and
        this test holds broadsheet to what it promises."""
        taken = {c.type for c in [*t.dead.values(), *([dropped] if dropped else [])] if fold(c.name) == fold(name)}
        free = [ty for ty in TYPES if ty not in taken]
        return self.rng.choice(free) if free else f"VARCHAR({len(taken) + 100})"

    def add(self, t: Table) -> str:
        name = self.fresh_name() if self.rng.random() < 0.7 or not t.dead else self.rng.choice(list(t.dead.values())).name
        if t.col(name):
            name = self.fresh_name()
        type_ = self.type_for(t, name)
        if self.run(f'ALTER TABLE "{t.name}" ADD COLUMN "{name}" {type_}'):
            t.columns.append(self.new_col(name, type_))
        return f"add {t.name}.{name}"

    def rename(self, t: Table) -> str:
        col = self.rng.choice(t.columns)
        to = self.fresh_name() if self.rng.random() < 0.8 or not t.dead else self.rng.choice(list(t.dead.values())).name
        if t.col(to):
            to = self.fresh_name()
        if self.run(f'ALTER TABLE "{t.name}" RENAME COLUMN "{col.name}" TO "{to}"'):
            col.name = to
        return f"rename {t.name}.{col.name}"

    def swap(self, t: Table) -> str:
        if len(t.columns) < 3:
            return self.add(t)
        a, b = self.rng.sample(t.columns[1:], 2)
        tmp = self.fresh_name()
        if self.run(
            f'ALTER TABLE "{t.name}" RENAME COLUMN "{a.name}" TO "{tmp}"',
            f'ALTER TABLE "{t.name}" RENAME COLUMN "{b.name}" TO "{a.name}"',
            f'ALTER TABLE "{t.name}" RENAME COLUMN "{tmp}" TO "{b.name}"',
        ):
            a.name, b.name = b.name, a.name
        return f"swap {t.name}.{a.name} and {b.name}"

    def rename_then_add(self, t: Table) -> str:
        col = self.rng.choice(t.columns[1:] or t.columns)
        old, to = col.name, self.fresh_name()
        if self.run(
            f'ALTER TABLE "{t.name}" RENAME COLUMN "{old}" TO "{to}"',
            f'ALTER TABLE "{t.name}" ADD COLUMN "{old}" TEXT',
            f'UPDATE "{t.name}" SET "{old}" = "{to}"',
        ):
            col.name = to
            t.columns.append(self.new_col(old))
        return f"rename {t.name}.{old} to {to}, add {old}"

    def drop_then_add(self, t: Table) -> str:
        if len(t.columns) < 2:
            return self.add(t)
        col = self.rng.choice(t.columns[1:])
        others = [c for c in t.columns[1:] if c is not col]
        source = self.rng.choice(others).name if others else None
        type_ = self.type_for(t, col.name, dropped=col)
        statements = [f'ALTER TABLE "{t.name}" DROP COLUMN "{col.name}"', f'ALTER TABLE "{t.name}" ADD COLUMN "{col.name}" {type_}']
        if source:
            statements.append(f'UPDATE "{t.name}" SET "{col.name}" = "{source}"')
        if self.run(*statements):
            t.columns.remove(col)
            t.dead[col.uid] = col
            t.columns.append(self.new_col(col.name, type_))
        return f"drop {t.name}.{col.name}, add it again"

    def drop(self, t: Table) -> str:
        if len(t.columns) < 2:
            return self.add(t)
        col = self.rng.choice(t.columns[1:])
        if self.run(f'ALTER TABLE "{t.name}" DROP COLUMN "{col.name}"'):
            t.columns.remove(col)
            t.dead[col.uid] = col
        return f"drop {t.name}.{col.name}"

    def alter_api(self, t: Table) -> str:
        """Renames through Datasette's alter API with a team token: one, or
        two that swap names. Datasette rebuilds the table; the team plugin
        makes it private if the spec's names move, else publishes it again
        with its spec in the altering actor's name."""
        if len(t.columns) < 3:
            return self.add(t)
        a, b = self.rng.sample(t.columns[1:], 2)
        if self.rng.random() < 0.5:
            renames = {a.name: b.name, b.name: a.name}
        else:
            renames = {a.name: self.fresh_name()}
        response = self.http.post(
            f"{self.cluster.primary.url}/data/{t.name}/-/alter",
            json={"operations": [{"op": "rename_column", "args": {"name": n, "to": to}} for n, to in renames.items()]},
            headers={"Authorization": f"Bearer {self.token}"},
        )
        assert response.status_code == 200, response.text
        self.rebuilt(t, renames, by_alter_api=True)
        return f"alter API {t.name} {renames}"

    def transform(self, t: Table) -> str:
        """sqlite-utils' transform from a script: a rebuild, after which no
        column can be followed: a public table is private."""
        col = self.rng.choice(t.columns[1:] or t.columns)
        renames = {col.name: self.fresh_name()} if self.rng.random() < 0.5 else {}
        db = sqlite_utils.Database(self.db)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            db[t.name].transform(rename=renames or None, types={col.name: str})
            self.db.execute("COMMIT")
        except sqlite3.Error:
            self.db.execute("ROLLBACK")
            return f"transform {t.name} refused"
        self.rebuilt(t, renames, by_alter_api=False)
        return f"transform {t.name} {renames}"

    def rebuilt(self, t: Table, renames: dict[str, str], by_alter_api: bool) -> None:
        """The model after a rebuild: the same data under the new names, as
        new columns (nothing of identity survives a rebuild)."""
        new_names = {c.uid: renames.get(c.name, c.name) for c in t.columns}
        record = t.record
        moved = record is not None and any(renames.get(n, n) != n for n in record.named if t.col(n))
        for c in t.columns:
            c.name = new_names[c.uid]
        t.dead = {}
        t.columns = [self.new_col(c.name, c.type) for c in t.columns]
        if record is None:
            return
        if by_alter_api and not moved:
            # Published again with its spec, the columns as they are now.
            t.record = Record(record.spec, [(c.uid, c.name) for c in t.columns], record.named)
        else:
            t.record = None

    def view(self, t: Table) -> str:
        """A view over the table reading its key and one published column,
        published when the model says it reads only what is public."""
        if t.record is None:
            return self.publish(t)
        shown = [n for n in t.published_columns() if n != t.columns[0].name]
        if not shown:
            return self.publish(t)
        name = f"dx_v{len(self.views) + 1}"
        column = self.rng.choice(shown)
        assert self.run(f'CREATE VIEW "{name}" AS SELECT "{t.columns[0].name}", "{column}" FROM "{t.name}"')
        self.control.publish(name)
        self.views[name] = View(name)
        return f"view {name} over {t.name}.{column}"

    def drop_table(self, t: Table) -> str:
        assert self.run(f'DROP TABLE "{t.name}"')
        t.exists, t.record, t.columns, t.dead = False, None, [], {}
        return f"drop table {t.name}"

    # -- what must be served -------------------------------------------------
    def settle_model(self) -> None:
        """Tables whose spec's names moved fail closed; views that no longer
        compile are withdrawn."""
        for t in self.tables.values():
            if t.record is not None and t.exists and t.record.named and t.moved():
                t.record = None
        for view in self.views.values():
            if view.listed and self.view_reads(view.name) is None:
                view.listed = False

    def view_reads(self, view: str) -> tuple[str, list[str]] | None:
        """The table and columns a view reads, from its SQL as data.db holds
        it now (RENAME COLUMN rewrites it), if they all exist."""
        row = self.db.execute("SELECT sql FROM sqlite_master WHERE type = 'view' AND name = ?", (view,)).fetchone()
        match = re.match(r'CREATE VIEW "[^"]+" AS SELECT "([^"]+)", "([^"]+)" FROM "([^"]+)"', row[0]) if row else None
        if not match:
            return None
        key, column, table = match.groups()
        t = self.tables[table]
        if not t.exists or not t.col(key) or not t.col(column):
            return None
        return table, [key, column]

    def listing(self) -> dict[str, dict | None]:
        return {
            name: (json.loads(spec) if spec else {})
            for name, spec in self.db.execute("SELECT table_name, spec FROM _public_tables")
            if name.startswith("dx_")
        }

    def expected_listing(self) -> dict[str, dict]:
        listed = {t.name: t.record.spec for t in self.tables.values() if t.record is not None}
        return listed | {v.name: {} for v in self.views.values() if v.listed}

    def expected(self) -> dict[str, tuple[list[str], list[list]] | None]:
        """Every dx_ table and view: (columns, rows) a read node must serve,
        or None for 403. Computed on a copy of the team's rows, read in one
        transaction, with Python's sqlite3."""
        copy = sqlite3.connect(":memory:")
        public = sqlite3.connect(":memory:")
        self.db.execute("BEGIN")
        try:
            for t in self.tables.values():
                if not t.exists:
                    continue
                cursor = self.db.execute(f'SELECT * FROM "{t.name}"')
                names = [d[0] for d in cursor.description]
                copy.execute(f'CREATE TABLE "{t.name}" ({", ".join(chr(34) + n + chr(34) for n in names)})')
                copy.executemany(f'INSERT INTO "{t.name}" VALUES ({", ".join("?" for _ in names)})', cursor.fetchall())
        finally:
            self.db.execute("COMMIT")
        served: dict[str, tuple[list[str], list[list]] | None] = {}
        for t in self.tables.values():
            if not t.exists or t.record is None:
                served[t.name] = None
                continue
            columns = t.published_columns()
            cols = ", ".join(f'"{n}"' for n in columns)
            where = t.record.spec.get("where", "1")
            rows = copy.execute(f'SELECT {cols} FROM "{t.name}" WHERE {where} ORDER BY 1').fetchall()
            served[t.name] = (columns, [list(r) for r in rows])
            public.execute(f'CREATE TABLE "{t.name}" ({cols})')
            public.executemany(f'INSERT INTO "{t.name}" VALUES ({", ".join("?" for _ in columns)})', rows)
        for view in self.views.values():
            reads = self.view_reads(view.name) if view.listed else None
            if reads is None or served.get(reads[0]) is None or not set(reads[1]) <= set(served[reads[0]][0]):
                served[view.name] = None
                continue
            table, (key, column) = reads
            rows = public.execute(f'SELECT "{key}", "{column}" FROM "{table}" ORDER BY 1').fetchall()
            served[view.name] = ([key, column], [list(r) for r in rows])
        copy.close()
        public.close()
        return served

    def served(self, node_url: str, name: str) -> tuple[list[str], list[list]] | None:
        response = self.http.get(f"{node_url}/public/{name}.json", params={"_size": "max", "_shape": "arrays",
                                                                            "_extra": "columns"})
        if response.status_code == 403:
            return None
        assert response.status_code == 200, (name, response.status_code, response.text[:300])
        body = response.json()
        return body["columns"], sorted(body["rows"], key=lambda r: (r[0] is None, r[0]))

    def check(self) -> None:
        """Wait for the cluster to settle, then hold every read node to the model."""
        self.settle_model()
        want = self.expected_listing()
        try:
            wait_until(lambda: self.listing() == want, timeout=15, message="the publish state the model says")
        except AssertionError:
            raise AssertionError(f"seed {self.seed}, step {self.steps}: data.db lists {self.listing()}, the model {want}")
        settle(self.cluster, timeout=15)
        self.cluster.wait_for_replicas(timeout=15)
        expected = self.expected()
        for name, value in expected.items():
            if value is not None:
                self.public_values.update(str(v).encode() for row in value[1] for v in row if isinstance(v, str))
                value = (value[0], sorted(value[1], key=lambda r: (r[0] is None, r[0])))
            for node in self.cluster.replicas:
                got = self.served(node.url, name)
                assert got == value, (
                    f"seed {self.seed}, step {self.steps}: {node.name} serves {name} as {got}, the model says {value}"
                )

    def never_public(self) -> list[str]:
        """Values that were never public but are in some byte of a read node."""
        from test_privacy import process_memory_matches

        found = []
        for node in self.cluster.replicas:
            for path, data in file_bytes(node.root):
                found += [f"{path}: {m!r} ({self.origin.get(m)})" for m in tokens(TOKEN.findall(data)) - self.public_values]
            for service in (node.litefs_service, node.datasette_service):
                pid = self.cluster.supervisor.pid(service)
                found += [f"{service}: {m!r} ({self.origin.get(m)})"
                          for m in tokens(process_memory_matches(pid, TOKEN)) - self.public_values]
        return found

    def run_steps(self, steps: int, scan_every: int = 100) -> None:
        started = time.monotonic()
        history: list[str] = []
        for n in range(1, steps + 1):
            history.append(f"{n}: {self.step()}")
            try:
                self.check()
            except AssertionError:
                self.say("the last steps:\n  " + "\n  ".join(history[-12:]))
                raise
            if n % scan_every == 0 or n == steps:
                leaked = self.never_public()
                if leaked:
                    self.say("the steps:\n  " + "\n  ".join(history[-scan_every:]))
                assert leaked == [], f"seed {self.seed}, step {n}: never-public values on read nodes: {leaked[:10]}"
        self.say(
            f"seed {self.seed}: {steps} steps in {time.monotonic() - started:.1f} s, {len(self.public_values)} values"
            f" public at some point, {self.values} written; steps: {dict(sorted(self.counts.items()))}"
        )


def main(argv: list[str] | None = None) -> int:
    """A longer run on a cluster of its own (scripts/differential)."""
    import argparse
    import tempfile
    from pathlib import Path

    from broadsheet.tokens import mint
    from broadsheet.client import ControlClient
    from local.cluster import LocalCluster

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a new one, printed)")
    parser.add_argument("--steps", type=int, default=2000, help="how many steps (default 2000)")
    parser.add_argument("--scan-every", type=int, default=200, help="scan read nodes' bytes every N steps (default 200)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
    print(f"seed {seed}, {args.steps} steps (again: scripts/differential --seed {seed} --steps {args.steps})", flush=True)
    with tempfile.TemporaryDirectory(prefix="broadsheet-differential-") as root:
        with LocalCluster(Path(root), replicas=2, compress=False, sample=False, quiet=True) as cluster:
            token = mint(cluster.primary.secret, "tester")
            run = Differential(cluster, ControlClient(cluster.primary.control_url, token), token, seed,
                               say=lambda line: print(line, flush=True))
            try:
                run.run_steps(args.steps, scan_every=args.scan_every)
            except AssertionError as exc:
                print(f"FAILED: {exc}", flush=True)
                return 1
            finally:
                run.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
