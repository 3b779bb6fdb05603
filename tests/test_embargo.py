"""Embargoes (fast: the publisher's runner on plain files, the control
plane in-process): a table set to be published at a moment has no byte in
public.db before it and is there within a second after; a restart of the
runner in between neither loses nor repeats it; cancel works; a bad time is
a 400 that says what is wrong with it."""

from __future__ import annotations

import html
import re
import threading
import time
from contextlib import closing, contextmanager
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from broadsheet.cli import cli
from conftest import wait_until
from inprocess import plain_primary, plain_primary_files, public_litefs_port  # noqa: F401, F811 (fixtures)
from primary import store
from primary.publisher import Publisher
from primary.publisher.runner import Runner
from primary.store import PublishError, PublishSpec, schedule

SENTINEL = "EMBARGOED-SENTINEL-41c"


def soon(seconds: float) -> str:
    return schedule.moment_text(datetime.now(timezone.utc) + timedelta(seconds=seconds))


def _budget(path) -> None:
    with closing(store.connect(str(path))) as conn:
        store.ensure_schema(conn)
        with store.immediate(conn):
            conn.execute("CREATE TABLE budget (id INTEGER PRIMARY KEY, line TEXT, amount INTEGER)")
            conn.executemany("INSERT INTO budget VALUES (?, ?, ?)", [(i, f"{SENTINEL} {i}", i * 100) for i in range(1, 51)])


@contextmanager
def running(data, public, mark):
    """The publisher's runner as the publisher process runs it (no LiteFS: it polls)."""
    runner = Runner(Publisher(data, public, mark), None, poll_interval=0.05)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        yield runner
    finally:
        runner.stopped.set()
        runner.wake.set()
        thread.join(10)
        runner.publisher.close()


def public_bytes(public) -> bytes:
    return b"".join(p.read_bytes() for p in public.parent.glob(public.name + "*"))


@pytest.mark.parametrize(
    "at, message",
    [
        ("2020-01-01T00:00:00Z", "is in the past"),
        ("tomorrow at nine", "is not a time"),
        ("2099-12-02T09:30:00", "has no time zone"),
        ("", "must be a time"),
    ],
)
def test_a_bad_moment_is_refused_and_says_why(tmp_path, at, message):
    _budget(tmp_path / "data.db")
    with closing(store.connect(str(tmp_path / "data.db"))) as conn:
        with pytest.raises(PublishError, match=message) as caught:
            schedule.schedule(conn, "budget", True, at, "test")
        assert caught.value.status == 400 and schedule.pending(conn) == []


def test_a_scheduled_publish_sends_nothing_before_its_moment_and_survives_a_restart_once(tmp_path):
    data, public, mark = tmp_path / "data.db", tmp_path / "public.db", tmp_path / "watermark.json"
    _budget(data)
    at = soon(1.5)
    with closing(store.connect(str(data))) as conn:
        entry = schedule.schedule(conn, "budget", True, at, "alice", PublishSpec.from_dict({"where": "amount > 1000"}))
    moment = datetime.fromisoformat(at)
    with running(data, public, mark):
        time.sleep(0.3)  # the runner has run cycles meanwhile
        assert public.exists() and SENTINEL.encode() not in public_bytes(public)
    # The runner restarts before the moment; the entry is still pending.
    with running(data, public, mark):
        wait_until(lambda: SENTINEL.encode() in public_bytes(public), timeout=10, message="the table published")
    with closing(store.connect(str(data), readonly=True)) as conn:
        (entry_row,) = conn.execute("SELECT applied_at, outcome FROM _public_schedule WHERE id = ?", (entry.id,))
        published = [e for e in store.audit_entries(conn, table="budget") if e["operation"] == "publish"]
        assert schedule.pending(conn) == []
    applied = datetime.fromisoformat(entry_row[0])
    assert moment <= applied < moment + timedelta(seconds=1)  # within a second, on this clock
    assert entry_row[1] == "applied"
    assert len(published) == 1 and published[0]["actor"].startswith(f"alice (scheduled for {at}")
    # A restart after the moment applies nothing again.
    with running(data, public, mark) as runner:
        time.sleep(0.3)
        runner.publisher.run_cycle()
    with closing(store.connect(str(data), readonly=True)) as conn:
        assert len([e for e in store.audit_entries(conn, table="budget") if e["operation"] == "publish"]) == 1
        assert store.public_specs(conn)["budget"].where == "amount > 1000"


def test_a_scheduled_unpublish_and_a_cancelled_publish(tmp_path):
    data, public, mark = tmp_path / "data.db", tmp_path / "public.db", tmp_path / "watermark.json"
    _budget(data)
    with closing(store.connect(str(data))) as conn:
        store.set_public(conn, "budget", True, actor="test")
        withdraw = schedule.schedule(conn, "budget", False, soon(0.5), "bob")
        later = schedule.schedule(conn, "budget", True, soon(0.8), "carol")
        assert [e.id for e in schedule.pending(conn)] == [withdraw.id, later.id]
        schedule.cancel(conn, later.id, "dave")
        with pytest.raises(PublishError, match="No pending scheduled entry"):
            schedule.cancel(conn, later.id, "dave")
        (cancelled_by,) = conn.execute("SELECT cancelled_by FROM _public_schedule WHERE id = ?", (later.id,)).fetchone()
        assert cancelled_by == "dave"
    with running(data, public, mark):
        wait_until(lambda: SENTINEL.encode() in public_bytes(public), timeout=10, message="published now")
        with closing(store.connect(str(data), readonly=True)) as conn:
            wait_until(lambda: "budget" not in store.public_tables(conn), timeout=10, message="the unpublish applied")
        time.sleep(1.0)  # past the cancelled entry's moment
    with closing(store.connect(str(data), readonly=True)) as conn:
        assert "budget" not in store.public_tables(conn) and schedule.pending(conn) == []


def test_the_control_plane_and_the_cli_schedule_list_and_cancel(plain_primary):  # noqa: F811 (the fixture)
    control = plain_primary.control
    at = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    bad = control.post("/schedule", json={"table": "planes", "at": "2026-12-02T09:30:00"})
    assert bad.status_code == 400 and "has no time zone" in bad.json()["error"]
    past = control.post("/schedule", json={"table": "planes", "at": "2001-01-01T00:00:00Z"})
    assert past.status_code == 400 and "is in the past" in past.json()["error"]
    missing = control.post("/schedule", json={"table": "nope", "at": at})
    assert missing.status_code == 404
    made = control.post("/schedule", json={"table": "planes", "at": at, "spec": {"masks": {"seats": "NULL"}}})
    assert made.status_code == 200, made.text
    entry = made.json()
    assert entry["operation"] == "publish" and entry["set_by"] == "tester" and entry["at"].endswith("Z")
    assert control.get("/schedule").json() == [entry]
    assert "planes" not in {t for t, in plain_primary.data("SELECT table_name FROM _public_tables")}
    assert control.delete(f"/schedule/{entry['id']}").status_code == 200
    assert control.get("/schedule").json() == []
    assert control.delete(f"/schedule/{entry['id']}").status_code == 404

    data_db = str(plain_primary.data_db)
    run = CliRunner().invoke
    refused = run(cli, ["publish", "planes", "--data-db", data_db, "--at", "soon"])
    assert refused.exit_code == 1 and "is not a time" in refused.output
    done = run(cli, ["publish", "planes", "--data-db", data_db, "--at", at])
    assert done.exit_code == 0 and "planes will be public at" in done.output, done.output
    listed = run(cli, ["schedule", "--data-db", data_db])
    assert "publish   planes" in listed.output, listed.output
    (entry_id,) = [e.id for e in schedule.pending(plain_primary.connect())]
    assert run(cli, ["schedule", "--data-db", data_db, "--cancel", str(entry_id)]).exit_code == 0
    assert run(cli, ["schedule", "--data-db", data_db]).output.strip() == "nothing scheduled"
    withdrawn = run(cli, ["unpublish", "airports", "--data-db", data_db, "--at", at])
    assert withdrawn.exit_code == 0 and "airports will be private at" in withdrawn.output, withdrawn.output
    assert [e.public for e in schedule.pending(plain_primary.connect())] == [False]


def test_the_make_public_page_schedules_shows_a_countdown_and_cancels(plain_primary):  # noqa: F811 (the fixture)
    site, token = plain_primary.team_site(), plain_primary.token
    page = "/-/broadsheet/visibility/data/planes"
    at = (datetime.now(timezone.utc) + timedelta(hours=2)).isoformat()
    bad = site.post(page, data={"operation": "publish", "action": "publish", "at": "09:30 tomorrow"}, token=token)
    assert bad.status_code == 400 and "is not a time" in html.unescape(bad.text)
    done = site.post(
        page, data={"operation": "publish", "action": "publish", "columns": ["tailnum", "year"], "at": at}, token=token
    )
    assert done.status_code == 200 and "planes will be public at" in " ".join(done.text.split())
    assert 'class="broadsheet-countdown"' in done.text
    (entry,) = site.control.get("/schedule").json()
    assert entry["set_by"] == "tester" and entry["spec"]["exclude_columns"]
    assert "planes" not in {t for t, in plain_primary.data("SELECT table_name FROM _public_tables")}
    entry_id = re.search(r'name="entry" value="(\d+)"', done.text).group(1)
    cancelled = site.post(page, data={"operation": "cancel", "entry": entry_id}, token=token)
    assert cancelled.status_code == 200 and "Cancelled" in cancelled.text
    assert site.control.get("/schedule").json() == []
