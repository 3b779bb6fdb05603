"""fly.toml, run: the image's processes started the way fly.toml says, on a
network shaped like Fly's.

Everything the machines are given comes from fly.toml itself (its
``[processes]``, ``[env]``, ``[[vm]]`` memory, ``[[mounts]]``,
``[[services]]`` and checks), so the file and this test cannot drift; plus
what Fly sets on every machine (FLY_APP_NAME, FLY_REGION, FLY_MACHINE_ID,
FLY_PRIVATE_IP, ``fly-local-6pn`` in /etc/hosts) and the ``fly secrets set``
of the deployment guide, applied to every machine as Fly does.

The network: one bridge with IPv6 (each machine has a fixed "6PN" address)
and a DNS server (dnsmasq, on the host) that answers Fly's internal names
(``<group>.process.<app>.internal``, ``<app>.internal``,
``top1.nearest.of.<app>.internal``) with IPv6 addresses only, and nothing
for IPv4: a service that binds IPv4 alone is unreachable by name, as on Fly.
The containers still have IPv4 addresses (Docker 20.10 has no IPv6-only
networks), but no name leads there. The team reaches the primary at its
IPv6 address, as `fly proxy` does.

Run by ``scripts/test-containers`` (BROADSHEET_CONTAINER_TESTS=1). The tests
build on each other in file order; every container, volume, the network and
dnsmasq are removed afterwards, pass or fail.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import signal
import subprocess
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from broadsheet.team_secrets import TEAM_SECRET_VARS
from conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]
DOCKER = os.environ.get("DOCKER", "docker")
IMAGE = os.environ.get("BROADSHEET_IMAGE", "broadsheet:latest")
FLY = tomllib.loads((ROOT / "fly.toml").read_text())
GUIDE = (ROOT / "docs" / "deploying.md").read_text()
PRIVATE_SENTINEL = "PRIVATE-SENTINEL-fly-6pn-41c9"
PUBLIC_MARKER = "PUBLIC-MARKER-fly-6pn-8d02"
# The syd read node is far away: it streams public.db through a link
# (toxiproxy, the binary scripts/setup builds) run on its own machine, so the
# primary's gate still sees the machine's 6PN address.
TOXIPROXY = ROOT / "bin" / "toxiproxy-server"
SYD_MS = 130  # one way, each direction: Sydney from London is about 260 ms round trip
LINK_PORT = 20299


def docker(*args: str, timeout: float = 180, check: bool = True, input: str | None = None):
    done = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout, input=input)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


def fly_section() -> str:
    start = GUIDE.index("## On Fly.io")
    end = GUIDE.index("\n## ", start + 1)
    return GUIDE[start:end]


def fly_secrets() -> dict[str, str]:
    """Every NAME=VALUE of a `fly secrets set` in the guide's Fly section,
    with a value made up for each (Fly gives secrets to every machine)."""
    found = {}
    for line in re.findall(r"^fly secrets set (.+)$", fly_section(), flags=re.M):
        for name in re.findall(r"\b([A-Z][A-Z0-9_]+)=", line):
            found[name] = secrets.token_hex(16)
    return found


def memory(group: str) -> str:
    """The group's [[vm]] memory as a container limit ("1gb" -> "1g")."""
    vm = next(v for v in FLY["vm"] if group in v.get("processes", [group]))
    size = vm["memory"].lower()
    return size.replace("gb", "g").replace("mb", "m")


def mount_for(group: str) -> str:
    return next(m["destination"] for m in FLY["mounts"] if group in m.get("processes", [group]))


def service_for(group: str) -> dict:
    return next(s for s in FLY["services"] if group in s.get("processes", [group]))


def bracket(ip: str) -> str:
    return f"[{ip}]"


@dataclass
class Machine:
    group: str
    region: str
    machine_id: str
    ip6: str
    container: str
    volume: str

    def url(self, port: int) -> str:
        return f"http://{bracket(self.ip6)}:{port}"

    def exec(self, *cmd: str, check: bool = True):
        return docker("exec", self.container, *cmd, check=check)


@dataclass
class FlyNet:
    """One app's machines on an IPv6 network with Fly's internal names."""

    app: str
    workdir: Path
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    machines: list[Machine] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=fly_secrets)
    dnsmasq: subprocess.Popen | None = None
    _next_host: int = 16

    def __post_init__(self):
        octet = int(self.run[:2], 16) % 200 + 20
        self.network = f"bsfly{self.run}"
        self.subnet6 = f"fd42:b5:{self.run[2:6]}::/64"
        self.gateway6 = f"fd42:b5:{self.run[2:6]}::1"
        self.subnet4 = f"172.29.{octet}.0/24"
        self.gateway4 = f"172.29.{octet}.1"
        self.hosts = self.workdir / "internal.hosts"

    # -- the network ------------------------------------------------------
    def create(self) -> None:
        docker("network", "create", "--ipv6", "--subnet", self.subnet4, "--gateway", self.gateway4,
               "--subnet", self.subnet6, "--gateway", self.gateway6,
               "-o", f"com.docker.network.bridge.name={self.network}", self.network)
        self.write_hosts()
        # Fly's internal DNS, for this network's machines alone: AAAA
        # records from the hosts file, nothing else (no upstream, no A).
        self.dnsmasq = subprocess.Popen(
            ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces",
             f"--listen-address={self.gateway4}", "--port=53", f"--addn-hosts={self.hosts}",
             "--local=/internal/", "--user=root", "--pid-file=", "--log-facility=-", "--log-queries"],
            stdout=open(self.workdir / "dnsmasq.log", "w"), stderr=subprocess.STDOUT,
        )
        # Until it has read the hosts file, a SIGHUP (the next write_hosts)
        # would kill it rather than make it read the file again.
        wait_until(lambda: f"read {self.hosts}" in (self.workdir / "dnsmasq.log").read_text(),
                   timeout=20, message="dnsmasq to start")
        assert self.dnsmasq.poll() is None, (self.workdir / "dnsmasq.log").read_text()

    def write_hosts(self) -> None:
        lines = []
        for m in self.machines:
            names = [f"{m.group}.process.{self.app}.internal", f"{self.app}.internal",
                     f"{m.machine_id}.vm.{self.app}.internal", f"{m.region}.{self.app}.internal"]
            if m.group == "primary":
                names.append(f"top1.nearest.of.{self.app}.internal")
            lines.append(f"{m.ip6} {' '.join(names)}")
        self.hosts.write_text("\n".join(lines) + "\n")
        if self.dnsmasq is not None:
            self.dnsmasq.send_signal(signal.SIGHUP)  # reread the hosts file

    # -- machines ---------------------------------------------------------
    def launch(self, group: str, region: str, extra_env: dict[str, str] | None = None,
               wait: bool = True, link_ms: int | None = None) -> Machine:
        """A machine of ``group`` in ``region``; with ``link_ms``, a read node
        whose stream from the primary crosses a link with that one-way delay."""
        machine_id = secrets.token_hex(7)
        # Written as Python (and the resolver) write it: "0901", not "901".
        ip6 = str(ipaddress.ip_address(f"fd42:b5:{self.run[2:6]}::{self._next_host:x}"))
        self._next_host += 1
        m = Machine(group, region, machine_id, ip6, f"{self.network}-{group}-{machine_id}",
                    f"{self.network}-vol-{machine_id}")
        env = {
            **{k: str(v) for k, v in FLY["env"].items()},
            **self.secrets,
            "FLY_APP_NAME": self.app, "FLY_REGION": region, "FLY_MACHINE_ID": machine_id,
            "FLY_PRIVATE_IP": ip6, "FLY_PROCESS_GROUP": group,
            # Raw LTX files, so that the byte scans below see every page.
            "BROADSHEET_LTX_COMPRESS": "false",
            **(extra_env or {}),
        }
        link_args = []
        if link_ms is not None:
            env["BROADSHEET_PRIMARY_LITEFS_URL"] = f"http://127.0.0.1:{LINK_PORT}"
            link_args = ["-v", f"{TOXIPROXY}:/opt/link/toxiproxy-server:ro"]
        env_args = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
        self.machines.append(m)
        self.write_hosts()
        docker(
            "run", "-d", "--name", m.container, "--hostname", machine_id,
            "--network", self.network, "--ip6", ip6, "--dns", self.gateway4,
            "--add-host", f"fly-local-6pn:{ip6}",
            "--device", "/dev/fuse", "--cap-add", "SYS_ADMIN", "--security-opt", "apparmor=unconfined",
            "--memory", memory(group),
            "-v", f"{m.volume}:{mount_for(group)}", *link_args,
            *env_args, IMAGE, *FLY["processes"][group].split(),
        )
        if link_ms is not None:
            self._link(m, link_ms)
        if wait:
            self.wait_healthy(m)
        return m

    def _link(self, m: Machine, link_ms: int) -> None:
        docker("exec", "-d", m.container, "/opt/link/toxiproxy-server", "-host", "127.0.0.1", "-port", "8474")
        setup = (
            "import httpx, sys, time\n"
            "api = 'http://127.0.0.1:8474'\n"
            "for _ in range(100):\n"
            "    try:\n"
            "        httpx.get(api + '/proxies').raise_for_status(); break\n"
            "    except httpx.HTTPError:\n"
            "        time.sleep(0.1)\n"
            "httpx.post(api + '/proxies', json={'name': 'primary', 'listen': '127.0.0.1:%d',\n"
            "           'upstream': sys.argv[1], 'enabled': True}).raise_for_status()\n"
            "for stream in ('upstream', 'downstream'):\n"
            "    httpx.post(api + '/proxies/primary/toxics', json={'name': 'delay-' + stream, 'type': 'latency',\n"
            "               'stream': stream, 'attributes': {'latency': int(sys.argv[2]), 'jitter': 0}}).raise_for_status()\n"
        ) % LINK_PORT
        upstream = f"primary.process.{self.app}.internal:20203"
        docker("exec", m.container, "python3", "-c", setup, upstream, str(link_ms))

    def destroy(self, m: Machine) -> None:
        docker("rm", "-f", m.container, check=False)
        docker("volume", "rm", "-f", m.volume, check=False)
        self.machines.remove(m)
        self.write_hosts()

    def check_urls(self, m: Machine) -> list[str]:
        """fly.toml's health checks for the machine's group, as URLs."""
        urls = []
        for check in FLY.get("checks", {}).values():
            if m.group in check.get("processes", []):
                urls.append(f"{m.url(check['port'])}{check['path']}")
        for service in FLY.get("services", []):
            if m.group in service.get("processes", []):
                urls += [f"{m.url(service['internal_port'])}{c['path']}" for c in service.get("http_checks", [])]
        return urls

    def wait_healthy(self, m: Machine, timeout: float = 150) -> None:
        def healthy():
            if self.state(m) != "running":
                return "stopped"
            try:
                return all(httpx.get(u, timeout=2).status_code == 200 for u in self.check_urls(m))
            except httpx.HTTPError:
                return False

        try:
            result = wait_until(healthy, timeout=timeout, message=f"{m.group} {m.machine_id}'s fly.toml checks")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs(m)}") from None
        if result == "stopped":
            raise AssertionError(f"{m.container} is {self.state(m)}:\n{self.logs(m)}")

    def state(self, m: Machine) -> str:
        return docker("inspect", "-f", "{{.State.Status}}", m.container).stdout.strip()

    def logs(self, m: Machine, tail: int = 80) -> str:
        done = docker("logs", "--tail", str(tail), m.container, check=False)
        return done.stdout + done.stderr

    def group(self, name: str) -> list[Machine]:
        return [m for m in self.machines if m.group == name]

    def teardown(self) -> list[str]:
        for m in list(self.machines):
            logs = docker("logs", "--tail", "30", m.container, check=False)
            print(f"--- {m.container}\n{logs.stdout[-4000:]}{logs.stderr[-4000:]}")
            self.destroy(m)
        docker("network", "rm", self.network, check=False)
        if self.dnsmasq is not None:
            self.dnsmasq.terminate()
            self.dnsmasq.wait(10)
            print("--- dnsmasq\n" + (self.workdir / "dnsmasq.log").read_text()[-3000:])
        left = docker("ps", "-aq", "--filter", f"name={self.network}", check=False).stdout.split()
        left += docker("volume", "ls", "-q", "--filter", f"name={self.network}", check=False).stdout.split()
        left += docker("network", "ls", "-q", "--filter", f"name={self.network}", check=False).stdout.split()
        return left


@pytest.fixture(scope="module")
def fly(tmp_path_factory):
    net = FlyNet(app=f"bs-news-{uuid.uuid4().hex[:4]}", workdir=tmp_path_factory.mktemp("fly"))
    try:
        net.create()
        yield net
    finally:
        left = net.teardown()
        assert not left, f"the Fly-shaped test left {left}"


@pytest.fixture(scope="module")
def primary(fly):
    return fly.launch("primary", FLY["primary_region"])


@pytest.fixture(scope="module")
def token(fly, primary):
    # The guide's first token: `fly ssh console -g primary -C "broadsheet create-token NAME"`.
    command = re.search(r'fly ssh console -g primary -C "(broadsheet create-token [^"]+)"', fly_section())
    assert command, "the Fly guide gives the command that makes the first token"
    out = primary.exec(*command.group(1).split()).stdout.strip()
    assert out.startswith("dstok_"), out
    return out


@pytest.fixture(scope="module")
def replicas(fly, primary):
    assert TOXIPROXY.exists(), "bin/toxiproxy-server: scripts/setup builds it"
    return [fly.launch("replica", "syd", link_ms=SYD_MS), fly.launch("replica", "iad")]


def control(primary: Machine, token: str) -> httpx.Client:
    return httpx.Client(base_url=primary.url(8004), headers={"Authorization": f"Bearer {token}"}, timeout=30)


def team(primary: Machine, token: str) -> httpx.Client:
    return httpx.Client(base_url=primary.url(8001), headers={"Authorization": f"Bearer {token}"}, timeout=30)


def public_url(m: Machine) -> str:
    return m.url(service_for("replica")["internal_port"])


def wait_nodes(primary: Machine, token: str, machines: list[Machine], txid: int | None = None, timeout: float = 90):
    """Until /nodes lists exactly ``machines``, each connected and at ``txid``
    (default: the primary's public TXID)."""
    def ready():
        with control(primary, token) as c:
            want = txid if txid is not None else c.get("/health").json()["public_db_txid"]
            nodes = c.get("/nodes").json()
        if sorted(n["name"] for n in nodes) != sorted(m.machine_id for m in machines):
            return None
        return nodes if all(n["connected"] and n["txid"] >= want for n in nodes) else None

    return wait_until(ready, timeout=timeout, message=f"/nodes listing {[m.machine_id for m in machines]}")


def test_names_resolve_to_ipv6_only(fly, primary, replicas):
    probe = ("import socket, sys\n"
             "for family in (socket.AF_INET6, socket.AF_INET):\n"
             "    try:\n"
             "        print(family.name, sorted({i[4][0] for i in socket.getaddrinfo(sys.argv[1], 80, family)}))\n"
             "    except socket.gaierror:\n"
             "        print(family.name, [])\n")
    name = f"replica.process.{fly.app}.internal"
    out = primary.exec("python3", "-c", probe, name).stdout.splitlines()
    assert out == [f"AF_INET6 {sorted(m.ip6 for m in replicas)}", "AF_INET []"], out
    out = replicas[0].exec("python3", "-c", probe, f"primary.process.{fly.app}.internal").stdout.splitlines()
    assert out == [f"AF_INET6 {[primary.ip6]}", "AF_INET []"], out


def test_publish_reaches_every_read_node_in_every_region(fly, primary, token, replicas):
    with team(primary, token) as t:
        assert t.get("/-/login").status_code == 200  # the team Datasette, over IPv6 as fly proxy reaches it
        r = t.post("/data/-/create", json={"table": "notices", "pk": "id",
                                            "rows": [{"id": 1, "text": PUBLIC_MARKER}]})
        assert r.status_code == 201, r.text
        r = t.post("/data/-/create", json={"table": "staff", "pk": "id", "rows": [{"id": 1, "note": PRIVATE_SENTINEL}]})
        assert r.status_code == 201, r.text
    with control(primary, token) as c:
        r = c.post("/tables/notices/publish")
        assert r.status_code == 200, r.text
        txid = r.json()["public_txid"]
    nodes = wait_nodes(primary, token, replicas, txid)
    assert {n["name"]: n["region"] for n in nodes} == {m.machine_id: m.region for m in replicas}
    for m in replicas:
        rows = httpx.get(f"{public_url(m)}/public/notices.json?_shape=objects&_txid={txid}", timeout=10).json()["rows"]
        assert [r["text"] for r in rows] == [PUBLIC_MARKER]
        assert httpx.get(f"{public_url(m)}/public/staff.json", timeout=10).status_code == 403
    # No sample data unless asked for.
    assert httpx.get(f"{public_url(replicas[0])}/public/airports.json", timeout=10).status_code in (403, 404)


def test_the_far_read_node_receives_no_sooner_than_its_link(fly, primary, token, replicas):
    """syd streams through a link of 130 ms one way, admitted by the gate
    as any read node (its own 6PN address): the control plane's record has
    each TXID on it at least that long after the commit, on iad sooner."""
    syd, iad = replicas
    with team(primary, token) as t:
        r = t.post("/data/-/create", json={"table": "arrivals", "pk": "id", "rows": [{"id": 0, "text": "first"}]})
        assert r.status_code == 201, r.text
    with control(primary, token) as c:
        assert c.post("/tables/arrivals/publish").status_code == 200
    for i in range(3):
        with team(primary, token) as t:
            r = t.post("/data/arrivals/-/insert", headers={"Broadsheet-Wait": "public"},
                       json={"row": {"id": 1 + i, "text": f"{PUBLIC_MARKER} far {i}"}})
            assert r.status_code == 201, r.text
        txid = int(r.headers["broadsheet-public-txid"])
        with control(primary, token) as c:
            record = c.get(f"/publishes/{txid}", params={"wait": 30}).json()
        assert record["complete"], record
        ms = {node["name"]: node["ms"] for node in record["nodes"]}
        print(f"TXID {txid}: ms from commit to each node: {ms}")
        assert ms[syd.machine_id] >= SYD_MS * 0.95, ms
        assert ms[iad.machine_id] < ms[syd.machine_id], ms


def test_no_read_node_holds_a_team_secret(fly, primary, token, replicas):
    secret = primary.exec("cat", f"{mount_for('primary')}/secret").stdout.strip()
    assert len(secret) == 64
    # The primary's processes have it; the deployment gave it to no machine.
    assert "DATASETTE_SECRET" not in docker("inspect", "-f", "{{json .Config.Env}}", primary.container).stdout
    for m in replicas:
        config = docker("inspect", "-f", "{{json .Config.Env}}", m.container).stdout
        environs = m.exec("sh", "-c", "cat /proc/[0-9]*/environ | tr '\\0' '\\n'").stdout
        cmdlines = m.exec("sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '").stdout
        for name in TEAM_SECRET_VARS:
            assert f"{name}=" not in environs and f"{name}=" not in config, (m.machine_id, name)
        for value in (secret, token):
            assert value not in environs and value not in cmdlines
            found = m.exec("grep", "-r", "-l", "-a", "-F", "--exclude-dir=proc", "--exclude-dir=sys",
                           "--exclude-dir=dev", value, "/", check=False)
            assert found.returncode == 1 and not found.stdout, found.stdout
        # The private table's sentinel is in no byte of the read node's volume.
        scan = m.exec("grep", "-r", "-a", "-l", "-F", PRIVATE_SENTINEL, mount_for("replica"), check=False)
        assert scan.returncode == 1 and not scan.stdout, scan.stdout
        found = m.exec("grep", "-r", "-a", "-l", "-F", PUBLIC_MARKER, mount_for("replica"), check=False)
        assert found.returncode == 0, "the same scan finds what was published"


def test_a_read_node_given_a_team_secret_refuses_to_start(fly, primary):
    m = fly.launch("replica", "syd", extra_env={"DATASETTE_SECRET": "handed-to-every-machine"}, wait=False)
    try:
        wait_until(lambda: docker("inspect", "-f", "{{.State.Status}}", m.container).stdout.strip() == "exited",
                   timeout=60, message="the read node to exit")
        logs = docker("logs", m.container, check=False)
        assert "refusing to start a read node that holds a team secret: DATASETTE_SECRET" in logs.stdout + logs.stderr
        assert docker("inspect", "-f", "{{.State.ExitCode}}", m.container).stdout.strip() != "0"
    finally:
        fly.destroy(m)


def test_a_third_read_node_joins_and_leaves(fly, primary, token, replicas):
    third = fly.launch("replica", "syd")
    try:
        nodes = wait_nodes(primary, token, [*replicas, third])
        assert {n["name"]: n["region"] for n in nodes}[third.machine_id] == "syd"
        assert httpx.get(f"{public_url(third)}/public/notices.json", timeout=10).status_code == 200
    finally:
        fly.destroy(third)
    wait_nodes(primary, token, replicas)


def test_the_primary_restarts_and_read_nodes_catch_up(fly, primary, token, replicas):
    secret = primary.exec("cat", f"{mount_for('primary')}/secret").stdout.strip()
    docker("restart", "-t", "30", primary.container, timeout=120)
    fly.wait_healthy(primary)
    # The same secret (its volume kept it): the token made before still works.
    assert primary.exec("cat", f"{mount_for('primary')}/secret").stdout.strip() == secret
    with team(primary, token) as t:
        r = t.post("/data/notices/-/insert", headers={"Broadsheet-Wait": "public"},
                   json={"row": {"id": 2, "text": f"{PUBLIC_MARKER} after restart"}})
        assert r.status_code == 201, r.text
        txid = int(r.headers["broadsheet-public-txid"])
    wait_nodes(primary, token, replicas, txid, timeout=120)
    for m in replicas:
        rows = httpx.get(f"{public_url(m)}/public/notices.json?_shape=objects&_txid={txid}", timeout=10).json()["rows"]
        assert [r["text"] for r in rows] == [PUBLIC_MARKER, f"{PUBLIC_MARKER} after restart"]
