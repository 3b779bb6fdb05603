"""Running a node's role as a plain server would: ``broadsheet primary`` and
``broadsheet replica``, configured by environment variables alone, the
primary finding its read node by DNS."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from local.cluster import free_port
from conftest import wait_until


def run_role(role: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    # Nothing inherited that could configure it behind the test's back.
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BROADSHEET_", "DATASETTE_", "LITEFS_"))}
    return subprocess.Popen(
        [sys.executable, "-m", "broadsheet.cli", role],
        env={**base, **env}, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


@pytest.mark.cluster  # starts LiteFS itself
def test_roles_run_from_the_environment_and_find_each_other_by_dns(tmp_path):
    secret = "s" * 64
    team, control, public_litefs, read_port, read_litefs = (free_port() for _ in range(5))
    primary = run_role("primary", {
        "DATASETTE_SECRET": secret,
        "BROADSHEET_ROOT": str(tmp_path / "primary"),
        "BROADSHEET_PORT": str(team),
        "BROADSHEET_CONTROL_PORT": str(control),
        "BROADSHEET_PRIVATE_LITEFS_PORT": str(free_port()),
        "BROADSHEET_PUBLIC_LITEFS_ADDR": f"127.0.0.1:{public_litefs}",
        "BROADSHEET_SAMPLE": "true",
        # "localhost" resolves to this machine: the read node below is there.
        "BROADSHEET_READ_NODES_DNS": "localhost",
        "BROADSHEET_READ_NODE_PORT": str(read_port),
        "BROADSHEET_DISCOVERY_INTERVAL": "0.5",
        # What may stream public.db through the primary's gate: the read
        # node below is given the same (docs/deploying.md, plain servers).
        "BROADSHEET_REPLICATION_KEY": "r" * 64,
    }, tmp_path / "primary.log")
    replica = None
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{control}/health").status_code == 200,
                   timeout=120, message="primary up")
        replica = run_role("replica", {
            "BROADSHEET_ROOT": str(tmp_path / "replica"),
            "BROADSHEET_NODE_NAME": "edge-1",
            "BROADSHEET_REGION": "ams",
            "BROADSHEET_PORT": str(read_port),
            "BROADSHEET_LITEFS_ADDR": f"127.0.0.1:{read_litefs}",
            "BROADSHEET_PRIMARY_LITEFS_URL": f"http://127.0.0.1:{public_litefs}",
            "BROADSHEET_REPLICATION_KEY": "r" * 64,
        }, tmp_path / "replica.log")
        airports = f"http://127.0.0.1:{read_port}/public/airports.json?_size=1"
        wait_until(lambda: httpx.get(airports).status_code == 200, timeout=120, message="read node serving")
        assert httpx.get(f"http://127.0.0.1:{read_port}/public/planes.json").status_code == 403

        from broadsheet.tokens import mint

        headers = {"Authorization": f"Bearer {mint(secret, 'tester')}"}

        def discovered():
            nodes = httpx.get(f"http://127.0.0.1:{control}/nodes", headers=headers).json()
            return nodes if [(n["name"], n["region"], n["connected"]) for n in nodes] == [("edge-1", "ams", True)] else None

        wait_until(discovered, timeout=30, message="edge-1 discovered by DNS")
        # A flip reaches it, and the propagation record names it.
        flip = httpx.post(f"http://127.0.0.1:{control}/tables/planes/publish", headers=headers, timeout=30).json()
        record = httpx.get(f"http://127.0.0.1:{control}/publishes/{flip['public_txid']}",
                           params={"wait": 10}, headers=headers, timeout=30).json()
        assert record["complete"] and [n["name"] for n in record["nodes"]] == ["edge-1"]

        # The node stops while its name still resolves: it shows as
        # unreachable within seconds. (A node whose address leaves DNS leaves
        # the list: the container test scales down.)
        assert stop(replica) == 0
        wait_until(lambda: [n["connected"] for n in httpx.get(f"http://127.0.0.1:{control}/nodes",
                                                             headers=headers).json()] == [False],
                   timeout=30, message="edge-1 shown unreachable")
    finally:
        if replica is not None:
            stop(replica)
        assert stop(primary) == 0, (tmp_path / "primary.log").read_text()[-3000:]
    with open("/proc/mounts") as fp:
        assert str(tmp_path) not in fp.read()


@pytest.mark.parametrize(
    "role, env, message",
    [
        ("primary", {"BROADSHEET_PORT": "eighty"}, "BROADSHEET_PORT must be an integer"),
        ("replica", {"DATASETTE_SECRET": "x"}, "refusing to start a read node that holds a team secret: DATASETTE_SECRET"),
        ("replica", {"BROADSHEET_TEAM_PASSWORD": "pw", "BROADSHEET_TOKEN": "dstok_x"},
         "BROADSHEET_TEAM_PASSWORD (the team's login password); BROADSHEET_TOKEN (a team API token)"),
        ("primary", {"DATASETTE_SECRET": "x", "BROADSHEET_PORT": "eighty"}, "BROADSHEET_PORT must be an integer"),
        ("primary", {"DATASETTE_SECRET": "x", "BROADSHEET_READ_NODES": "{"}, "BROADSHEET_READ_NODES must be a JSON list"),
        ("primary", {"DATASETTE_SECRET": "x", "BROADSHEET_PUBLIC_LITEFS_ADDR": "nowhere"}, "must be host:port"),
        ("replica", {"BROADSHEET_PORT": "70000"}, "BROADSHEET_PORT must be a TCP port"),
        ("replica", {"BROADSHEET_LTX_COMPRESS": "maybe"}, "BROADSHEET_LTX_COMPRESS must be true or false"),
    ],
)
def test_a_bad_setting_is_named_and_nothing_starts(tmp_path, role, env, message):
    log = tmp_path / "out.log"
    proc = run_role(role, {"BROADSHEET_ROOT": str(tmp_path / "node"), **env}, log)
    assert proc.wait(30) != 0
    assert message in log.read_text()
    assert not (tmp_path / "node").exists()


@pytest.mark.cluster  # starts LiteFS itself
def test_an_empty_primary_process_refuses_while_its_standby_holds_the_writes(tmp_path):
    """`broadsheet primary` and `broadsheet standby` naming each other
    (BROADSHEET_PEERS, as Compose sets them): three writes acknowledged with
    Broadsheet-Wait: standby; the primary stopped, its volume emptied, and
    started again (what a restart policy does): it refuses, naming the
    standby's TXID and epoch. `broadsheet promote` then makes the standby
    the primary with every acknowledged write, and the empty node, started
    once more, refuses to be a second primary."""
    from broadsheet.tokens import mint

    secret = "s" * 64
    ports = {name: free_port() for name in (
        "team", "control", "private", "public", "status", "standby_litefs", "guard",
        "s_team", "s_control", "s_private", "s_public",
    )}
    primary_env = {
        "DATASETTE_SECRET": secret,
        "BROADSHEET_ROOT": str(tmp_path / "primary"),
        "BROADSHEET_PORT": str(ports["team"]),
        "BROADSHEET_CONTROL_PORT": str(ports["control"]),
        "BROADSHEET_PRIVATE_LITEFS_PORT": str(ports["private"]),
        "BROADSHEET_PUBLIC_LITEFS_ADDR": f"127.0.0.1:{ports['public']}",
        "BROADSHEET_STANDBY_URL": f"http://127.0.0.1:{ports['status']}",
        "BROADSHEET_STANDBY_WAIT_TIMEOUT": "5",
        "BROADSHEET_PEERS": f"http://127.0.0.1:{ports['s_private']}",
    }
    standby_env = {
        "DATASETTE_SECRET": secret,
        "BROADSHEET_ROOT": str(tmp_path / "standby"),
        "BROADSHEET_PRIVATE_PRIMARY_URL": f"http://127.0.0.1:{ports['private']}",
        "BROADSHEET_STANDBY_PORT": str(ports["status"]),
        "BROADSHEET_STANDBY_LITEFS_ADDR": f"127.0.0.1:{ports['standby_litefs']}",
        "BROADSHEET_STANDBY_GUARD_ADDR": f"127.0.0.1:{ports['guard']}",
        "BROADSHEET_PEERS": f"http://127.0.0.1:{ports['private']}",
        # Once promoted, the primary's settings:
        "BROADSHEET_PORT": str(ports["s_team"]),
        "BROADSHEET_CONTROL_PORT": str(ports["s_control"]),
        "BROADSHEET_PRIVATE_LITEFS_PORT": str(ports["s_private"]),
        "BROADSHEET_PUBLIC_LITEFS_ADDR": f"127.0.0.1:{ports['s_public']}",
    }
    token = {"Authorization": f"Bearer {mint(secret, 'tester')}"}
    team, status_url = f"http://127.0.0.1:{ports['team']}", f"http://127.0.0.1:{ports['status']}"
    primary = run_role("primary", primary_env, tmp_path / "primary.log")
    standby = run_role("standby", standby_env, tmp_path / "standby.log")
    again = promoted_team = None
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{ports['control']}/health").status_code == 200,
                   timeout=120, message="primary up")
        r = httpx.post(f"{team}/data/-/create", headers=token, json={"table": "kept", "pk": "id", "rows": [{"id": 0}]})
        assert r.status_code == 201, r.text
        wait_until(lambda: httpx.get(f"{status_url}/status").json()["following"], timeout=60, message="standby following")
        for i in (1, 2, 3):
            r = httpx.post(f"{team}/data/kept/-/insert", headers={**token, "Broadsheet-Wait": "standby"},
                           json={"row": {"id": i}}, timeout=30)
            assert r.status_code == 201, r.text
        txid = int(r.headers["broadsheet-standby-txid"])

        # The primary's volume is lost; whatever restarts it starts it empty.
        assert stop(primary) == 0
        shutil.rmtree(tmp_path / "primary")
        again = run_role("primary", primary_env, tmp_path / "primary-again.log")
        assert again.wait(120) == 1
        said = (tmp_path / "primary-again.log").read_text()
        assert "this node's data.db is empty" in said and f"holds data.db TXID {txid} (epoch 1)" in said, said
        assert "Promote the standby instead" in said
        status = httpx.get(f"{status_url}/status").json()
        assert status["txid"] == txid and status["acknowledged_txid"] == txid

        promote = subprocess.run(
            [sys.executable, "-m", "broadsheet.cli", "promote"], capture_output=True, text=True, timeout=60,
            env={**{k: v for k, v in os.environ.items() if not k.startswith(("BROADSHEET_", "DATASETTE_"))}, **standby_env},
        )
        assert promote.returncode == 0, promote.stderr + promote.stdout
        assert f"promoted at data.db TXID {txid} (epoch 2)" in promote.stdout
        assert f"(up to TXID {txid}) is in it" in promote.stdout and "told the running standby" in promote.stdout
        promoted_team = f"http://127.0.0.1:{ports['s_team']}"
        kept = wait_until(
            lambda: httpx.get(f"{promoted_team}/data/kept.json?_shape=array", headers=token).json(),
            timeout=120, message="the promoted standby's team Datasette",
        )
        assert {row["id"] for row in kept} == {0, 1, 2, 3}
        health = wait_until(lambda: httpx.get(f"http://127.0.0.1:{ports['s_control']}/health").json(),
                            timeout=60, message="the promoted control plane")
        assert health["epoch"] == 2

        # The empty node once more: the promoted standby is primary now.
        again = run_role("primary", primary_env, tmp_path / "primary-third.log")
        assert again.wait(120) == 1
        assert "must not start as a second primary" in (tmp_path / "primary-third.log").read_text()
    finally:
        for proc in (primary, standby, again):
            if proc is not None:
                stop(proc)
    with open("/proc/mounts") as fp:
        assert str(tmp_path) not in fp.read()
