"""For the fault tests: a steady stream of team writes through Datasette's
write API (each retried until the primary acknowledges it: the acknowledged
ones are what must never be lost), and a look at the processes a supervisor
started."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import sqlite_utils

from broadsheet.litefs import unmount
from broadsheet.supervisor import processes_of


class WriteStream:
    """Inserts rows ``{id, n}`` into ``table`` of the primary's data.db, one
    request at a time, until stopped. A write whose answer is lost (the
    process died mid-request) is sent again with ``replace``, so a retry never
    duplicates it. ``acked`` lists ``(id, monotonic time)`` of every 201."""

    def __init__(self, datasette_url: str, token: str, table: str, first_id: int = 1, pause: float = 0.01):
        self.url = f"{datasette_url}/data/{table}/-/insert"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.next_id = first_id
        self.pause = pause
        self.acked: list[tuple[int, float]] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                row = {"id": self.next_id, "n": self.next_id}
                try:
                    response = client.post(self.url, json={"row": row, "replace": True}, headers=self.headers)
                    ok = response.status_code == 201
                except httpx.HTTPError:
                    ok = False
                if ok:
                    self.acked.append((self.next_id, time.monotonic()))
                    self.next_id += 1
                    self._stop.wait(self.pause)
                else:
                    self.failures += 1
                    self._stop.wait(0.05)

    def acked_after(self, moment: float) -> int | None:
        """The first id acknowledged after ``moment``, if any yet."""
        return next((i for i, at in self.acked if at > moment), None)

    @property
    def ids(self) -> set[int]:
        return {i for i, _ in self.acked}

    def __enter__(self) -> "WriteStream":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(15)


class LedgerWriter:
    """Rows 1, 2, … into ``ledger`` through the team's write API, every
    other one with ``Broadsheet-Wait: standby``, until stopped; what was
    acknowledged: id -> (waited for the standby, data.db TXID)."""

    def __init__(self, client: httpx.Client, row=lambda n, waited: {"id": n}):
        self.client, self.row = client, row
        self.acknowledged: dict[int, tuple[bool, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write, daemon=True)

    def _write(self) -> None:
        n = 1
        while not self._stop.is_set():
            waited = n % 2 == 0
            try:
                r = self.client.post(
                    "/data/ledger/-/insert",
                    headers={"Broadsheet-Wait": "standby"} if waited else {},
                    json={"row": self.row(n, waited)},
                )
            except httpx.HTTPError:  # the primary going, or gone
                self._stop.wait(0.05)
                continue
            if r.status_code == 201:
                self.acknowledged[n] = (waited, int(r.headers["broadsheet-private-txid"]))
            n += 1

    def __enter__(self) -> "LedgerWriter":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def lost(self, present: set[int], waited: bool | None = None) -> list[int]:
        """Acknowledged ids not in ``present`` (only those waited for, or
        only those not, if ``waited`` says which)."""
        return [n for n, (w, _) in self.acknowledged.items() if n not in present and waited in (None, w)]

    @property
    def newest_txid(self) -> int:
        return max(txid for _, txid in self.acknowledged.values())


def create_stream_table(data_db, table: str) -> None:
    db = sqlite_utils.Database(data_db)
    db.execute("PRAGMA busy_timeout = 10000")
    db[table].create({"id": int, "n": int}, pk="id", if_not_exists=True)
    db.close()


def ids_in(db_path, table: str) -> set[int]:
    """Every id in ``table`` of a database file (a LiteFS mount's copy), read-only."""
    import sqlite3

    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        return {row[0] for row in conn.execute(f'SELECT id FROM "{table}"')}
    finally:
        conn.close()


def environ(pid: int) -> list[str]:
    return _proc_list(pid, "environ")


def argv(pid: int) -> list[str]:
    return _proc_list(pid, "cmdline")


def _proc_list(pid: int, name: str) -> list[str]:
    with open(f"/proc/{pid}/{name}", "rb") as fp:
        return fp.read().decode(errors="replace").split("\0")[:-1]


def started_in(root, marker: str) -> list[int]:
    """The processes the supervisor of ``root`` started that have ``marker``
    as one of their arguments or environment variables
    (``broadsheet.janitor``, ``LITEFS_DIR=…/mnt``)."""
    found = []
    for pid in processes_of(root):
        try:
            if marker in argv(pid) + environ(pid):
                found.append(pid)
        except OSError:
            continue
    return found


def kill_everything(root) -> None:
    """What a test leaves must not outlive it, pass or fail: every process the
    supervisor of ``root`` started (a stopped one too), every mount under it."""
    for pid in processes_of(root):
        for sig in (signal.SIGKILL, signal.SIGCONT):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    with open("/proc/mounts") as fp:
        mounts = [line.split()[1] for line in fp if line.split()[1].startswith(f"{root}/")]
    for mount in sorted(mounts, reverse=True):
        unmount(mount)
