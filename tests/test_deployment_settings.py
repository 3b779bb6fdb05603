"""Settings a deployment does not have to write: the primary's own secret
(made on its volume, never handed to every machine), Fly's names from
FLY_APP_NAME, binding every address, and a read node's refusal of a team
secret. No process is started here."""

import os
import stat

import pytest

from broadsheet.config import ConfigError, listen_host
from broadsheet.team_secrets import TEAM_SECRET_VARS, refuse_team_secrets
from primary.node import PrimaryNode
from replica.node import ReadNode


def test_a_primary_without_a_secret_makes_one_on_its_volume_and_keeps_it(tmp_path):
    env = {"BROADSHEET_ROOT": str(tmp_path / "vol")}
    first = PrimaryNode.from_env(env)
    path = tmp_path / "vol" / "secret"
    assert path.read_text().strip() == first.secret and len(first.secret) == 64
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = PrimaryNode.from_env(env)
    assert (again.secret, again.cluster_id) == (first.secret, first.cluster_id)
    # Its own processes get it; nothing else about the environment changes.
    assert again.env()["DATASETTE_SECRET"] == first.secret
    assert not [p.name for p in (tmp_path / "vol").iterdir() if p.name.startswith(".secret")]


def test_a_given_secret_wins_and_no_file_is_made(tmp_path):
    node = PrimaryNode.from_env({"BROADSHEET_ROOT": str(tmp_path), "DATASETTE_SECRET": "given"})
    assert node.secret == "given"
    assert not (tmp_path / "secret").exists()


def test_a_bad_setting_writes_no_secret(tmp_path):
    with pytest.raises(ConfigError, match="BROADSHEET_PORT"):
        PrimaryNode.from_env({"BROADSHEET_ROOT": str(tmp_path / "vol"), "BROADSHEET_PORT": "x"})
    assert not (tmp_path / "vol").exists()


def test_an_empty_secret_file_is_an_error_not_a_new_secret(tmp_path):
    (tmp_path / "secret").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        PrimaryNode.from_env({"BROADSHEET_ROOT": str(tmp_path)})
    assert (tmp_path / "secret").read_text() == "\n"


def test_on_fly_names_come_from_the_app_and_the_cluster_survives_a_new_volume(tmp_path):
    fly = {"FLY_APP_NAME": "news-desk", "FLY_REGION": "lhr", "FLY_MACHINE_ID": "148e"}
    one = PrimaryNode.from_env({**fly, "BROADSHEET_ROOT": str(tmp_path / "a")})
    assert one.public_litefs_url == "http://primary.process.news-desk.internal:20203"
    assert one.read_nodes_dns == "replica.process.news-desk.internal"
    # A primary on a new, empty volume makes a new secret but is the same
    # cluster: its backups restore there.
    two = PrimaryNode.from_env({**fly, "BROADSHEET_ROOT": str(tmp_path / "b")})
    assert two.secret != one.secret and two.cluster_id == one.cluster_id
    node = ReadNode.from_env({"FLY_APP_NAME": "news-desk", "FLY_REGION": "syd", "FLY_MACHINE_ID": "91a2",
                              "BROADSHEET_ROOT": str(tmp_path / "r")})
    assert node.primary_public_url == "http://primary.process.news-desk.internal:20203"
    assert (node.name, node.region) == ("91a2", "syd")
    # What a deployment sets explicitly still wins.
    assert PrimaryNode.from_env({**fly, "BROADSHEET_ROOT": str(tmp_path / "a"),
                                 "BROADSHEET_READ_NODES_DNS": "edges"}).read_nodes_dns == "edges"


@pytest.mark.parametrize("name", sorted(TEAM_SECRET_VARS))
def test_a_read_node_refuses_every_team_secret(tmp_path, name):
    with pytest.raises(ConfigError, match=f"holds a team secret: {name}"):
        ReadNode.from_env({name: "value", "BROADSHEET_ROOT": str(tmp_path)})
    refuse_team_secrets({name: ""})  # set but empty holds nothing


def test_a_read_nodes_processes_never_inherit_a_team_secret(tmp_path):
    node = ReadNode.from_env({"BROADSHEET_ROOT": str(tmp_path)})
    for service in node.services():
        assert set(TEAM_SECRET_VARS) <= set(service.drop_env), service.name


@pytest.mark.parametrize("host, bound", [("::", ""), ("[::]", ""), ("0.0.0.0", "0.0.0.0"), ("127.0.0.1", "127.0.0.1"),
                                         ("fdaa::3", "fdaa::3")])
def test_every_address_means_ipv6_and_ipv4(host, bound):
    assert listen_host(host) == bound


def test_a_dropped_variable_never_reaches_the_process(tmp_path, monkeypatch):
    """The supervisor's own environment holds a secret (a shell that
    exported it, `broadsheet up` run inside one): a service that drops it
    does not see it."""
    import sys

    from broadsheet.supervisor import Service, Supervisor

    monkeypatch.setenv("DATASETTE_SECRET", "from-the-shell")
    out = tmp_path / "env.txt"
    supervisor = Supervisor(tmp_path / "logs")
    try:
        supervisor.start(Service(
            name="printer",
            argv=[sys.executable, "-c", f"import os, time; open({str(out)!r}, 'w').write(repr(sorted(os.environ))); time.sleep(60)"],
            ready=lambda: out.exists() and out.stat().st_size > 0,
            drop_env=("DATASETTE_SECRET",),
        ))
        names = out.read_text()
    finally:
        supervisor.stop_all()
    assert "'PATH'" in names and "DATASETTE_SECRET" not in names
