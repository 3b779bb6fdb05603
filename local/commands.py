"""The local cluster's commands (``broadsheet up``, ``down``, ``promote``),
composed into the ``broadsheet`` command by its entry point
(``broadsheet.commands``, pyproject.toml)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import click

from broadsheet.cluster_file import CLUSTER_FILE, DEFAULT_DIR, load_state
from broadsheet.options import cluster_dir


@click.group()
def commands():
    """The local cluster's commands."""


@commands.command()
@cluster_dir
@click.option("--replicas", type=click.IntRange(1, 16), help="Number of read nodes.  [default: 2, or one per --link]")
@click.option("--port", default=8001, show_default=True, type=int, help="First port; the cluster uses the next ~40.")
@click.option("--no-sample", is_flag=True, help="Start with an empty data.db instead of the sample tables.")
@click.option("--standby", "with_standby", is_flag=True, help="Also run a standby of data.db (see the README).")
@click.option("--metadata", "metadata_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Datasette metadata for the DATABASES (metadata.yml / metadata.json, or a datasette.yaml).")
@click.option("--link", "link_specs", multiple=True, metavar="NAME=DELAY[:jitter=J][:rate=R]",
              help="Put a read node behind a link with this one-way delay (syd=130ms,iad=40ms:rate=10mbit): "
                   "read nodes take the links in order; standby=… delays the standby's. Repeatable.")
@click.argument("databases", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def up(root, replicas, port, no_sample, with_standby, metadata_file, link_specs, databases):
    """Start a local cluster (primary + read nodes) and run until Ctrl-C.
    With DATABASES (SQLite files, as `datasette x.db` takes them), data.db
    starts with their tables, views and full-text tables, every table
    private, and the metadata of --metadata; else with the sample tables."""
    from broadsheet.config import ConfigError
    from broadsheet.supervisor import run_until_signalled

    from .cluster import LocalCluster, read_node_plugins, team_plugins
    from .links import STANDBY, parse_links

    try:
        links = parse_links(link_specs)
    except ConfigError as exc:
        raise click.ClickException(str(exc))
    if replicas is None:
        replicas = max(2, len([spec for spec in links if spec.name != STANDBY]))

    sample = not no_sample and not databases
    primary_env = {}
    if databases:
        from primary.store import PublishError, adoption
        from primary.store.datasette_metadata import parse_document

        # Refused now, before anything starts: the primary checks again
        # against data.db.
        try:
            sources = [adoption.inspect(path) for path in databases]
            adoption.check_between(sources)
            if metadata_file:
                parse_document(metadata_file.read_text(), metadata_file.name)
        except PublishError as exc:
            raise click.ClickException(exc.message)
        primary_env = {
            "BROADSHEET_ADOPT": os.pathsep.join(str(p.resolve()) for p in databases),
            "BROADSHEET_ADOPT_METADATA": str(metadata_file.resolve()) if metadata_file else "",
        }
    elif metadata_file:
        raise click.ClickException("--metadata describes the DATABASES given with it: name one or more")
    try:
        replica_env = read_node_plugins(sample, say=click.echo)
        primary_env.update(team_plugins(say=click.echo))
        # The terminal shows what a person needs to read (processes starting
        # and stopping, warnings, errors); every access log line stays in the logs.
        cluster = LocalCluster(
            root, replicas=replicas, base_port=port, echo=sys.stdout, sample=sample, quiet=True,
            replica_env=replica_env, standby=with_standby, primary_env=primary_env, links=links,
        )
    except ConfigError as exc:
        raise click.ClickException(str(exc))

    def on_up():
        click.echo("\nbroadsheet is up:\n" + cluster.urls() + "\n\nCtrl-C stops every process and unmounts every mount.\n")

    def on_promote():
        cluster.promote_standby()
        click.echo("\nthe standby is the primary now:\n" + cluster.urls() + "\n")

    # SIGUSR1: `broadsheet promote --dir` promoted the standby.
    status = run_until_signalled(cluster.start, cluster.stop, on_up, on_promote)
    click.echo("stopped; every mount unmounted.")
    sys.exit(status)


@commands.command()
@click.option(
    "--dir", "root", type=click.Path(file_okay=False, path_type=Path), default=None, envvar="BROADSHEET_DIR",
    help="Promote the standby of the local cluster in this directory (default: this machine's standby, from its"
    " environment; else the local cluster in .cluster).",
)
@click.option("--force", is_flag=True, help="Promote even though the primary still answers.")
def promote(root, force):
    """Make a standby the primary of both clusters: this machine's (run it on
    the standby), or a local cluster's (--dir). Writes after the standby's
    last TXID are lost (see `broadsheet status` for that window first);
    refused while the primary still answers as primary, or when the
    standby's copy is older than what it acknowledged."""
    from broadsheet.config import ConfigError
    from broadsheet.supervisor import holder
    from primary.standby.fencing import AnotherPrimary, check_no_other_primary
    from primary.standby.node import StandbyNode
    from primary.standby.promoted import loss_window, promotion
    from primary.standby.promotion import PromoteRefused
    from primary.standby.promotion import promote as record

    local = root is not None or not (os.environ.get("DATASETTE_SECRET") or os.environ.get("BROADSHEET_CLUSTER_ID"))
    if local:
        from .cluster import local_standby

        try:
            node, primary_litefs, pid = local_standby(root or Path(DEFAULT_DIR))
        except FileNotFoundError as exc:
            raise click.ClickException(str(exc))
        fence = [primary_litefs] if primary_litefs else []
    else:
        try:
            node = StandbyNode.from_env()
        except ConfigError as exc:
            raise click.ClickException(str(exc))
        fence = [node.primary_private_url, *node.peers]
        pid = holder(node.root)
    if promotion(node.root) is not None:
        raise click.ClickException(f"{node.root} is promoted already (see {node.root}/promoted.json)")
    if not force:
        try:
            check_no_other_primary(fence, node.private.url, key=node.replication_key or None)
        except AnotherPrimary as exc:
            raise click.ClickException(f"{exc}; stop it first, or pass --force")
    try:
        done = record(node)
    except PromoteRefused as exc:
        raise click.ClickException(str(exc))
    epoch = done["epoch"] if done["epoch"] is not None else "one more than data.db's, set as it starts"
    click.echo(f"promoted at data.db TXID {done['data_db_txid']} (epoch {epoch})")
    click.echo(loss_window(done))
    try:
        if pid is None:
            raise ProcessLookupError
        os.kill(pid, signal.SIGUSR1)
        click.echo(f"told the running {'cluster' if local else 'standby'} (pid {pid}) to make it the primary")
    except OSError:
        later = f"broadsheet up --dir {root or DEFAULT_DIR}" if local else "broadsheet standby"
        click.echo(f"nothing runs it now: it starts as the primary next time ({later})")


@commands.command()
@cluster_dir
def down(root):
    """Stop a cluster started with ``broadsheet up`` in another terminal."""
    try:
        info = load_state(root)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc))
    try:
        os.kill(info["pid"], signal.SIGTERM)
    except ProcessLookupError:
        raise click.ClickException(
            f"no cluster runs in {root}: the one that wrote {root}/cluster.json (pid {info['pid']}) has exited"
        ) from None
    except PermissionError:
        raise click.ClickException(f"the cluster in {root} (pid {info['pid']}) is another user's") from None
    deadline = time.monotonic() + 60
    while (Path(root) / CLUSTER_FILE).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    if (Path(root) / CLUSTER_FILE).exists():
        raise click.ClickException(f"the cluster (pid {info['pid']}) has not stopped after 60s; see {info['logs']}")
    click.echo("stopped")


@commands.group()
def link():
    """Cut, heal or change a link of the local cluster (`broadsheet up
    --link`) while it runs: try a partition by hand."""


def _links(root: Path):
    import httpx

    from .links import Links

    try:
        info = load_state(root)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc))
    if not info.get("links") or not info.get("links_api_port"):
        raise click.ClickException(f"the cluster in {root} runs no links (broadsheet up --link NAME=DELAY)")
    try:
        return Links.attach(int(info["links_api_port"]), info["links"]), info
    except httpx.HTTPError as exc:
        raise click.ClickException(f"the cluster's link proxy does not answer: {exc}")


def _save_links(root: Path, info: dict, links) -> None:
    import json

    info["links"] = links.as_dict()
    (Path(root) / CLUSTER_FILE).write_text(json.dumps(info, indent=2))


def _named(links, name: str):
    if name not in links.links:
        raise click.ClickException(f"no link named {name!r} (links: {', '.join(links.links)})")


@link.command("cut")
@cluster_dir
@click.argument("name")
@click.option("--mode", type=click.Choice(["drop", "refuse"]), default="drop", show_default=True,
              help="drop: a black hole (every byte lost, connections left open); refuse: connections closed and refused.")
def link_cut(root, name, mode):
    """Cut link NAME: the node behind it serves what it has and says it is
    cut off, until `broadsheet link heal NAME`."""
    links, info = _links(root)
    _named(links, name)
    links.cut(name, mode=mode)
    _save_links(root, info, links)
    click.echo(f"link {name} cut ({mode}); heal it with: broadsheet link heal {name}")


@link.command("heal")
@cluster_dir
@click.argument("name")
def link_heal(root, name):
    """Heal link NAME: the node behind it catches up by itself."""
    links, info = _links(root)
    _named(links, name)
    links.heal(name)
    _save_links(root, info, links)
    click.echo(f"link {name} healed")


@link.command("set")
@cluster_dir
@click.argument("spec", metavar="NAME=DELAY[:jitter=J][:rate=R]")
def link_set(root, spec):
    """Change a link's delay, jitter or rate (a cut stays cut)."""
    from broadsheet.config import ConfigError

    from .links import LinkSpec

    try:
        parsed = LinkSpec.parse(spec)
    except ConfigError as exc:
        raise click.ClickException(str(exc))
    links, info = _links(root)
    _named(links, parsed.name)
    links.set(parsed.name, parsed)
    _save_links(root, info, links)
    click.echo(f"link {parsed}")


@link.command("list")
@cluster_dir
def link_list(root):
    """The cluster's links: each one's spec, and whether it is cut."""
    links, _ = _links(root)
    for name, link_ in links.as_dict().items():
        state = f"CUT ({link_['cut']})" if link_["cut"] else "up"
        click.echo(f"{name:<10} {link_['spec']:<36} {state:<13} {link_['listen']} -> {link_['upstream']}")

