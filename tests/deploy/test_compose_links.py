"""The compose deployment with a read node far away: docker-compose.yml as it
is, plus a read node ("far", found by the primary as any other read node)
that streams public.db through a link container (toxiproxy v2.5.0, the
binary scripts/setup builds, run in broadsheet's image) with a one-way
delay, which the test cuts and heals.

What the compose test checks of a read node (the primary discovers it, it
serves what is published, no private byte reaches it) holds behind the
link; it receives each TXID no sooner than the link allows, keeps serving
while cut off, and catches up when the link heals. Run by
``scripts/test-containers``; the project comes down with its volumes
afterwards, pass or fail.
"""

from __future__ import annotations

import copy

import pytest
import yaml
from test_compose import (
    PRIVATE_SENTINEL,
    PUBLIC_MARKER,
    ROOT,
    Compose,
    control,
    json_get,
    publish,
    status_code,
    team,
    wait_for_nodes,
)

from conftest import wait_until
from local.links import Links, LinkSpec

DELAY_MS = 300  # one way, each direction
TOXIPROXY = ROOT / "bin" / "toxiproxy-server"


class LinkedCompose(Compose):
    def __init__(self, workdir):
        super().__init__(workdir)
        spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
        services = spec["services"]
        services["replica"]["scale"] = 1
        far = copy.deepcopy(services["replica"])
        far.pop("scale", None)
        far["environment"] = {**far["environment"], "BROADSHEET_PRIMARY_LITEFS_URL": "http://link:20203",
                              "BROADSHEET_REGION": "far"}
        # Found by the primary's DNS discovery like every read node.
        far["networks"] = {"default": {"aliases": ["replica"]}}
        far["depends_on"] = {**far["depends_on"], "link": {"condition": "service_started"}}
        services["far"] = far
        services["link"] = {
            "image": services["primary"]["image"],
            "entrypoint": ["/opt/link/toxiproxy-server", "-host", "0.0.0.0", "-port", "8474"],
            "volumes": [f"{TOXIPROXY}:/opt/link/toxiproxy-server:ro"],
            "ports": ["127.0.0.1::8474"],
        }
        (workdir / "docker-compose.yml").write_text(yaml.safe_dump(spec, sort_keys=False))

    def link_api_port(self) -> int:
        container = self.containers("link")[0]
        out = self.docker("port", container, "8474/tcp").stdout.split()
        return int(out[0].rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def linked(tmp_path_factory):
    assert TOXIPROXY.exists(), "bin/toxiproxy-server: scripts/setup builds it"
    c = LinkedCompose(tmp_path_factory.mktemp("compose-links"))
    try:
        c("up", "-d", "link", timeout=300)
        c.link = Links(wait_until(c.link_api_port, timeout=30, message="the link container's API"))
        c.link.add(LinkSpec("far", DELAY_MS), "0.0.0.0:20203", "primary:20203")
        wait_until(c.link._ready, timeout=30, message="toxiproxy answering, the link made")
        c("up", "-d", timeout=600)
        yield c
    finally:
        c.down()


@pytest.fixture(scope="module")
def token(linked):
    from broadsheet.tokens import mint

    return mint(linked.secret, "container-test")


def far_url(c: LinkedCompose) -> str:
    return c.host_url(c.containers("far")[0])


def test_the_far_node_joins_through_the_link_and_serves(linked, token):
    wait_until(lambda: status_code(f"{far_url(linked)}/-/replication.json") == 200, timeout=150,
               message="the far read node answering")
    wait_for_nodes(linked, token, 2, timeout=120)
    assert json_get(f"{far_url(linked)}/public/airports.json?_size=1")["rows"]
    with team(linked, token) as t:
        for table, rows in (("notices", [{"id": 1, "text": PUBLIC_MARKER}]),
                            ("staff_secrets", [{"id": 1, "secret": PRIVATE_SENTINEL}])):
            response = t.post("/data/-/create", json={"table": table, "pk": "id", "rows": rows})
            assert response.status_code == 201, response.text
    txid = publish(linked, token, "notices")
    body = json_get(f"{far_url(linked)}/public/notices.json?_txid={txid}&_shape=objects")
    assert [r["text"] for r in body["rows"]] == [PUBLIC_MARKER]
    assert status_code(f"{far_url(linked)}/public/staff_secrets.json") == 403


def test_the_far_node_receives_no_sooner_than_its_link(linked, token):
    """The control plane's propagation record (each node's arrival, as the
    node itself reports it on its own stream, which the link does not
    carry): the far node has each TXID at least the link's one-way delay
    after its commit, the near one sooner."""
    hostname = {service: linked.exec(linked.containers(service)[0], "hostname").stdout.strip()
                for service in ("replica", "far")}
    for i in range(3):
        with team(linked, token) as t:
            r = t.post("/data/notices/-/insert", headers={"Broadsheet-Wait": "public"},
                       json={"row": {"id": 10 + i, "text": f"{PUBLIC_MARKER} {i}"}})
            assert r.status_code == 201, r.text
        txid = int(r.headers["broadsheet-public-txid"])
        with control(linked, token) as c:
            record = c.get(f"/publishes/{txid}", params={"wait": 30}).json()
        assert record["complete"], record
        ms = {node["name"]: node["ms"] for node in record["nodes"]}
        print(f"TXID {txid}: ms from commit to each node: {ms}")
        assert ms[hostname["far"]] >= DELAY_MS * 0.95, ms
        assert ms[hostname["replica"]] < ms[hostname["far"]], ms


def test_a_cut_link_leaves_the_far_node_serving_and_it_catches_up(linked, token):
    far = far_url(linked)
    at = json_get(f"{far}/-/replication.json")["txid"]
    linked.link.cut("far")  # a black hole: every byte dropped
    with team(linked, token) as t:
        r = t.post("/data/notices/-/insert", headers={"Broadsheet-Wait": "public"},
                   json={"row": {"id": 100, "text": f"{PUBLIC_MARKER} during the cut"}})
        assert r.status_code == 201, r.text
    txid = int(r.headers["broadsheet-public-txid"])
    assert txid > at
    # Cut off: it serves what it has, never a 500.
    for _ in range(5):
        assert status_code(f"{far}/public/notices.json") == 200
        assert json_get(f"{far}/-/replication.json")["txid"] < txid
    # (closing the connections whose bytes the cut dropped, so both sides reconnect)
    linked.link.heal("far")
    wait_until(lambda: json_get(f"{far}/-/replication.json")["txid"] >= txid, timeout=90,
               message=f"the far node back at TXID {txid}")
    body = json_get(f"{far}/public/notices.json?_shape=objects&id=100")
    assert body["rows"] and body["rows"][0]["text"].endswith("during the cut")


def test_no_private_byte_reaches_the_far_node(linked, token):
    container = linked.containers("far")[0]
    scan = ["grep", "-r", "-a", "-l", "-F"]
    private = linked.exec(container, *scan, PRIVATE_SENTINEL, "/var/lib/broadsheet", check=False)
    assert private.returncode == 1 and private.stdout == "", private.stdout
    public = linked.exec(container, *scan, PUBLIC_MARKER, "/var/lib/broadsheet/litefs", check=False)
    assert public.returncode == 0 and public.stdout.strip(), public.stderr
