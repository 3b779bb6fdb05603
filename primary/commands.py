"""The primary's commands: run the primary and its standby, and everything
the team does to one (flip tables, import, tokens, team members, saved
queries, status, backups), by its control plane or directly on data.db.
Composed into the ``broadsheet`` command by its entry point
(``broadsheet.commands``, pyproject.toml)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import click

from broadsheet import tokens
from broadsheet.cluster_file import load_state, local_secret
from broadsheet.config import DEFAULT_ROOT, ConfigError
from broadsheet.options import cluster_dir, sqlite_errors, sqlite_file

# The team store of a primary in its image's default root (a container, a
# Fly machine: what `fly ssh console` finds when BROADSHEET_ROOT is not set).
MACHINE_TEAM_DB = Path(DEFAULT_ROOT) / "team.db"


@click.group()
def commands():
    """The primary's commands."""


@commands.command()
def primary():
    """Run this machine's primary node (both LiteFS mounts, the publisher, the
    team's Datasette, the control plane), configured by environment variables
    (see the README's Configuration), until SIGTERM."""
    from broadsheet.config import ConfigError
    from broadsheet.supervisor import run_node
    from primary.node import PrimaryNode

    try:
        node = PrimaryNode.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc))
    sys.exit(run_node(node))


@commands.command()
def standby():
    """Run this machine's standby (a LiteFS replica of the private cluster's
    data.db, its guard and its status API), configured by environment
    variables, until SIGTERM; `broadsheet promote` turns it into the primary."""
    from broadsheet.config import ConfigError
    from broadsheet.supervisor import Supervisor, run_until_signalled
    from primary.standby.node import StandbyNode
    from primary.standby.promoted import promotion
    from primary.standby.promotion import become_primary as promote_to_primary

    try:
        node = StandbyNode.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc))
    supervisor = Supervisor(node.root / "logs", echo=sys.stdout)
    promoted = []

    def become_primary(standby=None):
        try:
            primary = promote_to_primary(standby, supervisor)
        except ConfigError as exc:
            supervisor.log("broadsheet", f"cannot become primary: {exc}")
            return
        promoted.append(primary)
        supervisor.log("broadsheet", f"promoted: {primary.banner}")

    def start():
        if promotion(node.root) is not None:
            become_primary()
        else:
            node.start(supervisor)
        supervisor.watch()

    def on_promote():
        if promoted or promotion(node.root) is None:
            return  # a stray signal: nothing (more) to do
        become_primary(node)

    sys.exit(run_until_signalled(start, supervisor.stop_all, lambda: supervisor.log("broadsheet", node.banner), on_promote))


def _data_db(root: Path, data_db: str | None) -> str:
    """--data-db, else the local cluster's: an SQLite file that exists (a
    command never creates data.db somewhere it was not)."""
    if not data_db:
        try:
            data_db = load_state(root)["primary"]["data_db"]
        except FileNotFoundError as exc:
            raise click.ClickException(str(exc))
    return sqlite_file(data_db, "data.db")


@contextlib.contextmanager
def _opened(data_db: str, readonly: bool = False):
    """A connection to the SQLite file ``data_db`` (checked by
    ``sqlite_file``), closed after; the store's refusals and SQLite's
    errors become the command's message."""
    from primary import store

    path = sqlite_file(data_db, "data.db")
    try:
        conn = store.connect(path, readonly=readonly)
        try:
            yield conn
        finally:
            conn.close()
    except store.PublishError as exc:
        raise click.ClickException(exc.message)
    except sqlite_errors() as exc:
        raise click.ClickException(f"{path}: {_sqlite_message(exc)}")


def _sqlite_message(exc: BaseException) -> str:
    """SQLite's message, without APSW's class-name prefix."""
    text = str(exc)
    name = type(exc).__name__
    return text.removeprefix(f"{name}: ") if text.startswith(f"{name}: ") else text


data_db_option = click.option("--data-db", help="Path of data.db (default: the local cluster's).")


@commands.command()
@cluster_dir
@data_db_option
@click.option("--json", "as_json", is_flag=True)
def tables(root, data_db, as_json):
    """List data.db's tables and whether each is public."""
    from primary.store import listing

    with _opened(_data_db(root, data_db), readonly=True) as conn:
        entries = listing.tables(conn, count_rows=True)
    rows = [
        {"table": e.table, "public": e.public, "spec": e.spec.to_dict() if e.public else None, "rows": e.rows}
        for e in entries
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for entry in entries:
        label = "private" if entry.spec is None else ("public " if entry.spec.whole else "partial")
        detail = f"  ({entry.spec.describe()})" if entry.partial else ""
        click.echo(f"{label}  {entry.rows:>9}  {entry.table}{detail}")


@commands.command("release-key")
@cluster_dir
@data_db_option
def release_key(root, data_db):
    """Print the public key the publisher signs releases with (ed25519:...),
    for the team to publish and read nodes to pin (BROADSHEET_RELEASE_KEY)."""
    from broadsheet.release import SigningKey
    from primary.publisher.signer import newest_key

    with _opened(_data_db(root, data_db), readonly=True) as conn:
        text = newest_key(conn)
    if text is None:
        raise click.ClickException("data.db holds no signing key yet: the publisher makes one when it first runs")
    click.echo(str(SigningKey(text).public))


def _control(root: Path, url: str | None, token: str | None):
    """A control-plane client for ``url`` (default: the local cluster's), with
    ``token`` (default: one minted from the local cluster's secret)."""
    from broadsheet.client import ControlClient

    if url is None or token is None:
        try:
            info = load_state(root)
        except FileNotFoundError as exc:
            raise click.ClickException(f"{exc}; or pass --url and --token")
        url = url or info["primary"]["control"]
        if token is None:
            try:
                token = tokens.mint(local_secret(info), "cli")
            except FileNotFoundError as exc:
                raise click.ClickException(f"{exc}; or pass --token")
    return ControlClient(url, token)


control_options = [
    click.option("--url", envvar="BROADSHEET_URL", help="Control plane URL (default: the local cluster's)."),
    click.option("--token", envvar="BROADSHEET_TOKEN", help="Team token (default: minted for the local cluster)."),
]


def with_control(f):
    for option in reversed(control_options):
        f = option(f)
    return f


def _spec_options(f):
    for option in reversed(
        [
            click.option("--columns", help="Publish exactly these columns (comma-separated); later ones stay private."),
            click.option("--exclude-columns", help="Publish every column but these (comma-separated)."),
            click.option("--where", help="Publish only the rows this SQL expression over the table's columns selects."),
            click.option(
                "--mask", "masks", multiple=True, metavar="COLUMN=EXPR",
                help="Serve EXPR (an SQL expression over the table's columns, e.g. 'lat=round(lat, 2)' or"
                " 'email=NULL') under COLUMN's name; computed on the primary. Repeatable.",
            ),
            click.option("--dry-run", is_flag=True, help="Show what would be published, change nothing."),
        ]
    ):
        f = option(f)
    return f


def _spec(columns: str | None, exclude_columns: str | None, where: str | None, masks: tuple[str, ...] = ()) -> dict:
    split = lambda text: [c.strip() for c in text.split(",") if c.strip()]  # noqa: E731
    spec: dict = {}
    if columns is not None:
        spec["columns"] = split(columns)
    if exclude_columns is not None:
        spec["exclude_columns"] = split(exclude_columns)
    if where is not None:
        spec["where"] = where
    for mask in masks:
        column, sep, expression = mask.partition("=")
        if not sep or not column.strip() or not expression.strip():
            raise click.BadParameter(f"{mask!r} is not COLUMN=EXPRESSION", param_hint="--mask")
        spec.setdefault("masks", {})[column.strip()] = expression.strip()
    return spec


def describe_preview(p: dict) -> str:
    lines = [
        f"{p['table']}: {p['rows']} of {p['total_rows']} rows, {len(p['columns'])} columns"
        f" ({', '.join(p['columns'])}), about {p['estimated_bytes']:,} bytes",
    ]
    if p["public_now"]:
        lines.append(
            f"  change: columns +[{', '.join(p['columns_added'])}] -[{', '.join(p['columns_removed'])}],"
            f" rows +{p['rows_added']} -{p['rows_removed']}"
        )
    for row in p["sample"]:
        lines.append("  " + json.dumps(row, ensure_ascii=False, default=str))
    return "\n".join(lines)


def _flip_command(name: str, public: bool, help: str):
    @commands.command(name, help=help)
    @cluster_dir
    @with_control
    @click.option("--data-db", help="Flip directly in this data.db instead of through the control plane.")
    @click.option("--watch", "watch_", is_flag=True, help="Then wait until every read node has it.")
    @click.option(
        "--at", metavar="TIME",
        help="Not now but at TIME (ISO 8601 with a zone, e.g. 2026-12-02T09:30:00Z): nothing of the table"
        " leaves the primary before it. `broadsheet schedule` lists what is pending.",
    )
    @click.argument("table")
    def command(root, url, token, data_db, watch_, at, table, columns=None, exclude_columns=None, where=None,
                masks=(), dry_run=False):
        from broadsheet.client import ControlError, describe

        verb = "public" if public else "private"
        spec = _spec(columns, exclude_columns, where, masks)
        if at is not None:
            if dry_run or watch_:
                raise click.UsageError("--at sets a moment: it takes neither --dry-run nor --watch")
            _schedule_flip(root, url, token, data_db, table, public, at, spec)
            return
        if data_db:
            from primary import store
            from primary.store import PublishSpec, SpecError
            from primary.store.preview import preview

            with _opened(data_db, readonly=dry_run) as conn:
                try:
                    parsed = PublishSpec.from_dict(spec)
                    if dry_run:
                        click.echo(describe_preview(preview(conn, table, parsed).as_dict()))
                        return
                    flip = store.set_public(conn, table, public, actor="cli", spec=parsed)
                except SpecError as exc:
                    raise click.ClickException(str(exc))
            click.echo(f"{table} is {'now' if flip.changed else 'already'} {verb}")
            return
        client = _control(root, url, token)
        try:
            if dry_run:
                click.echo(describe_preview(client.preview(table, spec)))
                return
            try:
                result = client.publish(table, public, spec)
            except ControlError as exc:
                if not (watch_ and public and exc.status == 504):
                    raise
                # A large first copy, staged over many cycles: its progress
                # until the cycle that lists it (primary/publisher/staging.py).
                click.echo(f"{table}: {exc.message}; following its copy")
                txid = _follow_staging(client, table)
                if txid is None:
                    raise click.ClickException(f"{table} was not made public (its staged copy was erased)")
                result = {"changed": True, "private_txid": "?", "public_txid": txid}
            click.echo(
                f"{table} is {'now' if result['changed'] else 'already'} {verb}"
                f" (data.db TXID {result['private_txid']}, public TXID {result['public_txid']})"
            )
            if watch_ and result["public_txid"]:
                click.echo(describe(client.propagation(result["public_txid"], wait=10)))
        except ControlError as exc:
            raise click.ClickException(exc.message)

    if public:
        command = _spec_options(command)
    return command


def _follow_staging(client, table: str, poll: float = 0.5, say=click.echo) -> int | None:
    """Follow a staged first copy of ``table`` in the propagation records:
    say each new "N of M rows staged", until a cycle publishes it (its
    public TXID) or its staged copy is erased (None)."""
    import time

    shown = None
    while True:
        records = client.publishes(limit=50)
        for record in records:  # newest first
            cycle = record.get("cycle") or {}
            if table in (cycle.get("published") or []):
                return record["txid"]
        progress = next(
            ((r.get("cycle") or {}).get("staging", {}).get(table) for r in records
             if table in ((r.get("cycle") or {}).get("staging") or {})),
            None,
        )
        if progress is not None:
            line = f"{table}: {progress.get('copied', 0):,} of {progress.get('total', 0):,} rows staged"
            if progress.get("state") == "erased":
                return None
            if line != shown:
                say(line)
                shown = line
        time.sleep(poll)


def _schedule_flip(root, url, token, data_db, table: str, public: bool, at: str, spec: dict) -> None:
    from broadsheet.client import ControlError

    if data_db:
        from primary.store import PublishError, PublishSpec, SpecError, schedule

        with _opened(data_db) as conn:
            try:
                entry = schedule.schedule(conn, table, public, at, "cli", PublishSpec.from_dict(spec)).as_dict()
            except (SpecError, PublishError) as exc:
                raise click.ClickException(getattr(exc, "message", str(exc)))
    else:
        try:
            entry = _control(root, url, token).schedule(table, at, public, spec)
        except ControlError as exc:
            raise click.ClickException(exc.message)
    click.echo(f"{table} will be {'public' if public else 'private'} at {entry['at']} (entry {entry['id']})")


def describe_entry(e: dict) -> str:
    spec = f" {json.dumps(e['spec'])}" if e.get("spec") else ""
    return f"{e['id']:>4}  {e['at']}  {e['operation']:<9} {e['table']}{spec}  (set by {e['set_by']} at {e['set_at']})"


@commands.command("schedule")
@cluster_dir
@with_control
@click.option("--data-db", help="Read or change this data.db's schedule instead of through the control plane.")
@click.option("--cancel", "cancel_id", type=int, metavar="ID", help="Remove the pending entry ID.")
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
def schedule_command(root, url, token, data_db, cancel_id, as_json):
    """List the publishes and unpublishes set for a moment (`publish --at`), or cancel one."""
    from broadsheet.client import ControlError

    if data_db:
        from primary.store import PublishError, schedule

        with _opened(data_db, readonly=cancel_id is None) as conn:
            try:
                if cancel_id is not None:
                    done = schedule.cancel(conn, cancel_id, "cli").as_dict()
                else:
                    entries = [e.as_dict() for e in schedule.pending(conn)]
            except PublishError as exc:
                raise click.ClickException(exc.message)
    else:
        client = _control(root, url, token)
        try:
            if cancel_id is not None:
                done = client.cancel_scheduled(cancel_id)
            else:
                entries = client.scheduled()
        except ControlError as exc:
            raise click.ClickException(exc.message)
    if cancel_id is not None:
        click.echo(f"cancelled: {describe_entry(done)}")
    elif as_json:
        click.echo(json.dumps(entries, indent=2))
    else:
        click.echo("\n".join(describe_entry(e) for e in entries) or "nothing scheduled")


publish = _flip_command("publish", True, "Make TABLE public: all of it, or the columns and rows the options choose.")
unpublish = _flip_command("unpublish", False, "Make TABLE private again.")


@commands.command()
@cluster_dir
@with_control
@click.option("--data-db", help="Set it directly in this data.db instead of through the control plane.")
@click.argument("table", required=False)
@click.option("--title")
@click.option("--description")
@click.option("--license", "license_")
@click.option("--license-url")
@click.option("--source")
@click.option("--source-url")
def meta(root, url, token, data_db, table, title, description, license_, license_url, source, source_url):
    """Show or set the metadata read nodes show: of the public instance, or of
    TABLE (shown while it is public). An empty value clears a field."""
    values = {
        k: v
        for k, v in dict(title=title, description=description, license=license_, license_url=license_url,
                         source=source, source_url=source_url).items()
        if v is not None
    }
    if data_db:
        from primary import store

        with _opened(data_db) as conn:
            if values:
                click.echo(json.dumps(store.set_metadata(conn, table or store.INSTANCE, values), indent=2))
            else:
                click.echo(json.dumps(store.metadata(conn), indent=2))
        return
    from broadsheet.client import ControlError

    client = _control(root, url, token)
    try:
        result = client.set_metadata(table, values) if values else client.metadata()
    except ControlError as exc:
        raise click.ClickException(exc.message)
    click.echo(json.dumps(result, indent=2))


@commands.command("create-token")
@cluster_dir
@click.argument("actor")
@click.option("--expires-after", type=click.IntRange(min=1), help="Seconds until the token expires.")
@click.option("--secret", envvar="DATASETTE_SECRET", help="The shared secret (default: the local cluster's).")
def create_token(root, actor, expires_after, secret):
    """Create a team API token (dstok_…) for ACTOR, for Datasette's write API
    and the control plane."""
    if not secret:
        secret = _machine_secret(root)
    click.echo(tokens.mint(secret, actor, expires_after))


def _machine_secret(root: Path) -> str:
    """The secret of the local cluster, else of the primary on this machine
    (the one it made on its volume: what `fly ssh console` finds)."""
    from primary.node import read_secret, secret_file

    try:
        return local_secret(load_state(root))
    except FileNotFoundError as exc:
        local_error = str(exc)
    path = secret_file(os.environ)
    try:
        found = read_secret(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc))
    if found:
        return found
    raise click.ClickException(
        f"{local_error}, and this machine's primary has no secret at {path}; pass --secret / set DATASETTE_SECRET"
    )


@commands.group()
def user():
    """Team members who log in to the team's Datasette with a password."""


def _team(root: Path, team_db: str | None):
    """The primary's team store: --team-db, else BROADSHEET_ROOT's (as in a
    container), else the local cluster's."""
    from primary.datasette.team import Team

    if not team_db:
        if root_env := os.environ.get("BROADSHEET_ROOT"):
            team_db = str(Path(root_env) / "team.db")
        else:
            try:
                primary = load_state(root)["primary"]
                team_db = str(Path(primary.get("root") or Path(primary["secret_file"]).parent) / "team.db")
            except FileNotFoundError as exc:
                if not MACHINE_TEAM_DB.exists():
                    raise click.ClickException(f"{exc}; or pass --team-db")
                team_db = str(MACHINE_TEAM_DB)  # a primary's, in its image's default root
    return Team(team_db)


def _team_change(root: Path, team_db: str | None, change):
    """Apply ``change`` to the team store; its refusal, or SQLite's (a
    directory, not SQLite, no such directory), is the command's error. A
    team.db not made yet is made: a new primary has none until then."""
    from primary.datasette.team import TeamError

    team = _team(root, team_db)
    try:
        return change(team)
    except TeamError as exc:
        raise click.ClickException(str(exc))
    except sqlite_errors() as exc:
        raise click.ClickException(f"{team.path}: {exc}")


team_db_option = click.option(
    "--team-db", envvar="BROADSHEET_TEAM_DB", help="The primary's team.db (default: BROADSHEET_ROOT's, or the local cluster's)."
)


@user.command("add")
@cluster_dir
@team_db_option
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input instead of prompting.")
def user_add(root, team_db, name, password_stdin):
    """Add team member NAME (asks for a password)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    _team_change(root, team_db, lambda team: team.add_user(name, password))
    click.echo(f"{name} can now log in")


@user.command("remove")
@cluster_dir
@team_db_option
@click.argument("name")
def user_remove(root, team_db, name):
    """Remove team member NAME and end their sessions."""
    _team_change(root, team_db, lambda team: team.remove_user(name))
    click.echo(f"{name} removed; their sessions have ended")


@user.command("list")
@cluster_dir
@team_db_option
def user_list(root, team_db):
    """List team members who can log in with a password."""
    for name in _team_change(root, team_db, lambda team: team.users()):
        click.echo(name)


@commands.group()
def query():
    """Saved queries: named read-only SQL every read node serves at /public/NAME."""


def _query_call(root, url, token, call):
    from broadsheet.client import ControlError

    try:
        return call(_control(root, url, token))
    except ControlError as exc:
        raise click.ClickException(exc.message)


def _query_outcome(result: dict, done: str) -> str:
    line = f"{result['name']}: {done if result['changed'] else 'unchanged'}"
    line += f" (data.db TXID {result['private_txid']}, public TXID {result['public_txid']})"
    if result.get("withdrawn"):
        line += f"\n  withdrawn by the publisher: {result['withdrawn']}"
    return line


@query.command("save")
@cluster_dir
@with_control
@click.argument("name")
@click.option(
    "--sql", required=True, help="One read-only SQL statement over public tables, :name for parameters ('-': stdin)."
)
@click.option("--title")
@click.option("--description")
def query_save(root, url, token, name, sql, title, description):
    """Save (or replace) query NAME and publish it to every read node."""
    if sql == "-":
        sql = sys.stdin.read()
    result = _query_call(root, url, token, lambda c: c.save_query(name, sql, title, description))
    click.echo(_query_outcome(result, "published" if result["published"] else "saved, not published"))


@query.command("rm")
@cluster_dir
@with_control
@click.argument("name")
def query_rm(root, url, token, name):
    """Remove query NAME from every read node."""
    click.echo(_query_outcome(_query_call(root, url, token, lambda c: c.remove_query(name)), "removed"))


@query.command("list")
@cluster_dir
@with_control
@click.option("--json", "as_json", is_flag=True)
def query_list(root, url, token, as_json):
    """Every saved query: public, or withdrawn (and why)."""
    rows = _query_call(root, url, token, lambda c: c.queries())
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        label = "public   " if row["published"] else ("withdrawn" if row["withdrawn"] else "pending  ")
        title = f"  {row['title']}" if row["title"] else ""
        click.echo(f"{label}  {row['name']}{title}\n           {row['sql']}")
        if row["withdrawn"]:
            click.echo(f"           withdrawn: {row['withdrawn']}")


@commands.command()
@cluster_dir
@with_control
@click.option("--until", "until_txid", type=int, help="Exit once every node has this public TXID.")
def watch(root, url, token, until_txid):
    """Watch publishes reach every read node, live."""
    from broadsheet.client import ControlError, describe

    client = _control(root, url, token)
    try:
        for event, data in client.events():
            if event == "node" and data.get("left"):
                click.echo(f"{data['name']}: left")
            elif event == "node":
                state_ = "connected" if data["connected"] else "UNREACHABLE"
                click.echo(f"{data['name']}: txid {data['txid']} ({data['behind_txids']} behind, {state_})")
            elif event == "propagation":
                click.echo(describe(data))
                if until_txid is not None and data["txid"] >= until_txid and data["complete"]:
                    if data["cycle"] is None:
                        # Every node has it before what its cycle did is read:
                        # the control plane waits for that (briefly).
                        click.echo(describe(client.propagation(data["txid"], wait=5)))
                    return
    except ControlError as exc:
        raise click.ClickException(exc.message)
    except KeyboardInterrupt:
        pass


@commands.command()
@cluster_dir
@with_control
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--metadata", "metadata_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Datasette metadata for it: metadata.yml / metadata.json, or a datasette.yaml.")
@click.option("--publish", "publish_", help="Then publish these of its tables (comma-separated).")
@click.option("--replace", is_flag=True, help="Replace data.db's tables and views of the same names.")
def adopt(root, url, token, file, metadata_file, publish_, replace):
    """Copy the tables, views, indexes, triggers and full-text tables of the
    SQLite FILE into the running primary's data.db (through its control
    plane), every table private, with its metadata. One data.db
    transaction; a file that is not SQLite or is damaged, or names data.db
    already has (without --replace), are refused, changing nothing."""
    import tempfile

    from primary.store import PublishError, adoption
    from primary.store.datasette_metadata import parse_document

    try:
        # Refused here, before a byte is sent; the primary checks again.
        source = adoption.inspect(file)
        metadata = metadata_file.read_text() if metadata_file else None
        if metadata is not None:
            parse_document(metadata, metadata_file.name)
    except PublishError as exc:
        raise click.ClickException(exc.message)
    publish_list = [t.strip() for t in (publish_ or "").split(",") if t.strip()]
    unknown = [t for t in publish_list if t not in source.relations]
    if unknown:
        raise click.ClickException(f"not in {file.name}: {', '.join(unknown)}")
    client = _control(root, url, token)
    with contextlib.ExitStack() as stack:
        # Only the file is sent: committed transactions still in its WAL
        # would be left behind, so such a file is sent as SQLite's own
        # snapshot of it (the backup API), under its name.
        if adoption.has_wal(file):
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="broadsheet-adopt-"))
            click.echo(f"{file.name} has a write-ahead log: sending a snapshot of it", err=True)
            file = adoption.snapshot(file, Path(folder) / file.name)
            source = adoption.inspect(file)
        result = _upload(client, file, source, metadata, replace, publish_list)
    click.echo(
        f"adopted {len(result['tables'])} tables and views ({result['rows']:,} rows) into data.db in"
        f" {result['seconds']:.1f}s (data.db TXID {result['private_txid']}), every one private: "
        + ", ".join(result["tables"])
    )
    if result["replaced"]:
        click.echo(f"replaced: {', '.join(result['replaced'])}")
    if result["metadata_tables"]:
        click.echo(f"metadata for: {', '.join(result['metadata_tables'])}")
    if result["ignored"]:
        click.echo(
            "metadata keys broadsheet does not use (kept in data.db's _public_adoptions): "
            + ", ".join(result["ignored"])
        )
    for flip in result["published"]:
        click.echo(f"{flip['table']} is now public (public TXID {flip['public_txid']})")


def _upload(client, file: Path, source, metadata: str | None, replace: bool, publish_list: list[str]) -> dict:
    """Send ``file`` for adoption with a progress bar, which says when the
    upload is done and the primary's data.db transaction runs."""
    from broadsheet.client import ControlError

    try:
        with click.progressbar(length=source.size, label=f"uploading {file.name}", file=sys.stderr) as bar:
            sent = 0

            def progress(n: int) -> None:
                nonlocal sent
                sent += n
                bar.update(n)
                if n == 0 and sent >= source.size:  # the file is sent: the primary copies it now
                    bar.label = "adopting into data.db (one transaction)"
                    bar.render_progress()

            return client.adopt(file, metadata, replace=replace, publish=publish_list, progress=progress)
    except ControlError as exc:
        raise click.ClickException(exc.message)


@commands.command("import")
@cluster_dir
@data_db_option
@click.argument("table")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, allow_dash=False))
@click.option("--csv", "fmt", flag_value="csv", help="PATH is CSV (default: by extension).")
@click.option("--json", "fmt", flag_value="json", help="PATH is a JSON array of objects.")
@click.option("--nl", "fmt", flag_value="nl", help="PATH is newline-delimited JSON.")
@click.option("--pk", help="Primary key column when creating the table.")
@click.option("--replace", is_flag=True, help="Replace rows whose primary key already exists.")
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(1, 100_000))
def import_(root, data_db, table, path, fmt, pk, replace, batch_size):
    """Import CSV or JSON rows into TABLE of data.db (private until published)."""
    import sqlite_utils
    from sqlite_utils.utils import Format, TypeTracker, rows_from_file

    from broadsheet.names import is_internal

    if is_internal(table):
        raise click.ClickException(f"{table!r} is an internal table")
    fmt = fmt or {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "nl", ".ndjson": "nl"}.get(
        Path(path).suffix.lower()
    )
    if fmt is None:
        raise click.ClickException("Cannot tell the format from the file name: pass --csv, --json or --nl")
    formats = {"csv": Format.CSV, "json": Format.JSON, "nl": Format.NL}
    size = Path(path).stat().st_size
    target = _data_db(root, data_db)
    db = sqlite_utils.Database(target)
    db.execute("PRAGMA busy_timeout = 10000")
    try:
        with open(path, "rb") as raw, click.progressbar(length=size, label=f"importing {table}", file=sys.stderr) as bar:
            try:
                rows, _ = rows_from_file(_Progress(raw, bar), format=formats[fmt])
                tracker = None
                if fmt == "csv":
                    # sqlite-utils' --detect-types: every cell arrives as text.
                    tracker = TypeTracker()
                    rows = tracker.wrap({k: (None if v == "" else v) for k, v in row.items()} for row in rows)
                db[table].insert_all(rows, pk=pk, alter=True, replace=replace, batch_size=batch_size)
                if tracker is not None:
                    db[table].transform(types=tracker.types)
            except (ValueError, UnicodeDecodeError) as exc:
                raise click.ClickException(f"{path}: {exc}")
            except sqlite_errors() as exc:
                raise click.ClickException(f"{target}: {exc}")
        click.echo(f"{table}: {db[table].count} rows")
    finally:
        db.close()


class _Progress:
    """A binary file that advances a progress bar as it is read."""

    def __init__(self, raw, bar):
        self.raw, self.bar = raw, bar

    def read(self, n=-1):
        data = self.raw.read(n)
        self.bar.update(len(data))
        return data

    def readline(self, *args):
        line = self.raw.readline(*args)
        self.bar.update(len(line))
        return line

    def __iter__(self):
        return iter(self.readline, b"")

    def __getattr__(self, name):
        return getattr(self.raw, name)


@commands.command()
@cluster_dir
@with_control
@click.option("--json", "as_json", is_flag=True)
def status(root, url, token, as_json):
    """Show the primary and every read node the control plane knows (found by
    DNS or listed), with their public.db positions."""
    from broadsheet.client import ControlError

    client = _control(root, url, token)
    try:
        health, nodes = client.health(), client.nodes()
    except ControlError as exc:
        raise click.ClickException(exc.message)
    if as_json:
        click.echo(json.dumps({"health": health, "nodes": nodes}, indent=2))
        return
    click.echo(
        f"{'primary':<14} public.db txid {health['public_db_txid']:<6} data.db txid {health['data_db_txid']}"
        f", {health['nodes_connected']}/{health['nodes']} read nodes connected"
    )
    if standby := health.get("standby"):
        if standby["connected"]:
            lag = "unknown" if standby["lag_ms"] is None else f"{standby['lag_ms']:.1f} ms"
            click.echo(
                f"{'standby':<14} data.db txid {standby['txid']:<6} behind {standby['behind_txids']:<4}"
                f" lag {lag}  {standby['url']}"
            )
            if standby.get("refused"):
                click.echo(f"{'':<14} REFUSING this primary's data.db, keeping its own: {standby['refused']}")
        else:
            click.echo(f"{'standby':<14} UNREACHABLE  {standby['url']}: {standby['error']}")
    for node in nodes:
        where = f" [{node['region']}]" if node.get("region") else ""
        state_ = "connected" if node["connected"] else "UNREACHABLE"
        click.echo(
            f"{node['name']:<14} public.db txid {node['txid']:<6} behind {node['behind_txids']:<4}"
            f" lag {node['lag_ms']:>7.1f} ms  {state_:<11} {node['url']}{where}"
        )
        if node.get("primary_reachable") is False:
            heard = node.get("last_heard_s")
            ago = f"last heard from it {heard:.1f} s ago" if heard is not None else "never heard from it"
            click.echo(
                f"{'':<14} CUT OFF from the primary ({ago}): serves TXID {node['txid']},"
                f" {node['behind_txids']} behind, until its link returns"
            )
        if node.get("verified") is False:
            click.echo(f"{'':<14} UNVERIFIED: {node.get('verification') or 'no signed release covers its position'}")
    if offsite := health.get("offsite"):
        error = f"  last error: {offsite['last_error']}" if offsite.get("last_error") else ""
        click.echo(
            f"{'off-site':<14} data.db txid {offsite['uploaded_txid']:<6} behind {offsite['behind_txids']:<4}"
            f" lag {offsite['lag_seconds']:.1f} s  {offsite.get('state') or ''}  {offsite.get('url') or ''}{error}"
        )
    for heal in health.get("heals") or []:
        click.echo(f"{'public.db':<14} REBUILT at {heal['at']}: {heal['reason']}")


def _primary_here(root: Path) -> dict:
    """Where this machine's primary keeps data.db, its private LiteFS API and
    its backups: from the environment inside a primary's container (it sets
    BROADSHEET_ROOT), else from the local cluster's store."""
    if os.environ.get("BROADSHEET_ROOT") and os.environ.get("DATASETTE_SECRET"):
        from broadsheet.config import ConfigError
        from primary.node import PrimaryNode

        try:
            node = PrimaryNode.from_env()
        except ConfigError as exc:
            raise click.ClickException(str(exc))
        return {
            "data_db": str(node.data_db), "private_litefs": node.private.url,
            "backups": str(node.backups), "root": str(node.root), "watermark": str(node.watermark_file),
        }
    try:
        info = load_state(root)["primary"]
    except FileNotFoundError as exc:
        raise click.ClickException(f"{exc}; or run this on the primary (BROADSHEET_ROOT)")
    primary_root = Path(info.get("root") or Path(info["secret_file"]).parent)
    return {
        "data_db": info["data_db"], "private_litefs": info["private_litefs"],
        "backups": info.get("backups") or str(primary_root / "backups"), "root": str(primary_root),
        "watermark": str(primary_root / "publisher-watermark.json"),
    }


@commands.command()
@cluster_dir
@click.option("--data-db", help="Back up this data.db (default: this machine's primary's).")
@click.option("--to", "dest", type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the backup (default: BROADSHEET_BACKUP_DIR, else the primary's backups/).")
@click.option("--keep", type=click.IntRange(min=1), help="Then delete all but the newest KEEP backups there.")
@click.option("--json", "as_json", is_flag=True)
def backup(root, data_db, dest, keep, as_json):
    """Write a consistent snapshot of data.db, with its TXID, into a directory."""
    from primary import backup as backups

    here = None if (data_db and dest) else _primary_here(root)
    source = data_db or here["data_db"]
    try:
        taken = backups.take(source, dest or here["backups"], keep)
    except backups.BackupError as exc:
        raise click.ClickException(str(exc))
    except sqlite_errors() as exc:
        raise click.ClickException(f"{source}: {_sqlite_message(exc)}")
    if as_json:
        click.echo(json.dumps(taken.as_dict(), indent=2))
    else:
        click.echo(f"{taken.path}  (data.db TXID {taken.txid}, cluster {taken.cluster_id})")


@commands.command()
@cluster_dir
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option("--from", "from_url", metavar="S3_URL",
              help="Restore from the off-site backups at s3://bucket/prefix (BROADSHEET_BACKUP_KEY and the"
              " usual AWS_* settings) instead of a FILE.")
@click.option("--at", "at", metavar="TIME", help="With --from: data.db as it was at TIME (ISO 8601 with a zone).")
@click.option("--txid", type=click.IntRange(min=1), help="With --from: data.db as it was at this TXID.")
@click.option("--generation", help="With --from: of this generation (default: the newest; see `backups list`).")
@click.option("--dry-run", is_flag=True, help="With --from: say what would be restored, and check it, changing nothing.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the publisher to rebuild public.db.")
def restore(root, file, from_url, at, txid, generation, dry_run, timeout):
    """Replace the running primary's data.db with backup FILE, or with the
    off-site backups' data.db at a TXID or moment (--from); the publisher
    then rebuilds public.db from it and read nodes follow. Refuses, changing
    nothing, what is not a whole broadsheet data.db of this cluster, and an
    off-site object that is missing, changed or sealed with another key."""
    from broadsheet import sync
    from primary import backup as backups
    from primary.publishing import PublishTimeout, wait_published

    if (file is None) == (from_url is None):
        raise click.UsageError("give a backup FILE or --from s3://bucket/prefix")
    if file is not None and (at or txid or generation or dry_run):
        raise click.UsageError("--at, --txid, --generation and --dry-run go with --from")
    if at and txid:
        raise click.UsageError("--at or --txid, not both")
    here = None if dry_run else _primary_here(root)
    scratch = None
    if from_url is not None:
        import tempfile

        from primary.offsite import crypto
        from primary.offsite import restore as offsite
        from primary.offsite.store import Store, StoreError

        try:
            store = Store(from_url, crypto.key_from_env())
            line, target = offsite.choose(
                store, generation, txid, offsite.parse_moment(at) if at else None
            )
            scratch = Path(tempfile.mkdtemp(prefix="broadsheet-offsite-", dir=here["root"] if here else None))
            done = offsite.materialize(store, line, target, scratch / "data.db")
        except (ConfigError, offsite.RestoreError, crypto.ObjectError, StoreError) as exc:
            if scratch is not None:
                import shutil

                shutil.rmtree(scratch, ignore_errors=True)
            raise click.ClickException(str(exc))
        click.echo(
            f"{from_url}: data.db at TXID {done.txid} (generation {done.generation}, committed"
            f" {offsite.iso(done.committed_ms)}), from {len(done.objects)} objects, checksum {done.checksum:016x}"
            " and integrity check ok"
        )
        if dry_run:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)
            click.echo("dry run: nothing changed")
            return
        offsite.as_backup_file(done)
        file = done.path
    try:
        done = backups.restore(file, here["data_db"], here["private_litefs"], workdir=here["root"])
    except backups.BackupError as exc:
        raise click.ClickException(str(exc))
    finally:
        if scratch is not None:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)
    click.echo(
        f"restored {from_url or file} (taken at data.db TXID {done.backup.txid}) as data.db TXID {done.private_txid};"
        f" republishing {len(done.tables)} public tables"
    )
    try:
        mark = sync.run(wait_published(done.private_txid, timeout, watermark_file=here["watermark"]))
    except PublishTimeout:
        raise click.ClickException(
            f"the publisher has not rebuilt public.db within {timeout:g}s; see the primary's logs"
        ) from None
    click.echo(f"public.db rebuilt at public TXID {mark.public_txid}")


@commands.group("backups")
def backups_group():
    """Off-site backups (BROADSHEET_BACKUP_URL): what they hold, and a key for them."""


@backups_group.command("list")
@click.option("--from", "from_url", envvar="BROADSHEET_BACKUP_URL", required=True, metavar="S3_URL",
              help="The backups at s3://bucket/prefix (default: BROADSHEET_BACKUP_URL).")
@click.option("--json", "as_json", is_flag=True)
def backups_list(from_url, as_json):
    """What can be restored: each generation of data.db, from which TXID and
    time to which, and what a promotion left behind."""
    from primary.offsite import crypto
    from primary.offsite import restore as offsite
    from primary.offsite.store import Store, StoreError

    try:
        rows = offsite.describe(Store(from_url, crypto.key_from_env()))
    except (ConfigError, StoreError) as exc:
        raise click.ClickException(str(exc))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"{from_url}: no backups")
    for row in rows:
        click.echo(
            f"generation {row['generation']} (epochs {', '.join(map(str, row['epochs']))}): TXID {row['from_txid']}"
            f" ({row['from']}) to TXID {row['to_txid']} ({row['to']}); {row['objects']} objects, {row['bytes']:,} bytes,"
            f" {row['snapshots']} snapshots"
        )
        if row["left_behind"]:
            click.echo(f"  left behind by a promotion (not restored): {len(row['left_behind'])} objects")


@backups_group.command("new-key")
@click.option("--to", "key_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write it to this new file (mode 0600; never over one that exists) for BROADSHEET_BACKUP_KEY_FILE.")
def backups_new_key(key_file):
    """Print a new backup key (for BROADSHEET_BACKUP_KEY or its file). Keep a
    copy off the primary: without it, nothing in the bucket can be read."""
    from primary.offsite import crypto

    key = crypto.new_key()
    if key_file is None:
        click.echo(key)
        return
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise click.ClickException(f"{key_file} exists: refusing to write a new key over it (its backups need it)")
    except OSError as exc:
        raise click.ClickException(f"cannot write {key_file}: {exc.strerror}")
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    click.echo(f"wrote a new backup key to {key_file}")


@commands.command("run-offsite", hidden=True)
@click.option("--data-db", required=True)
@click.option("--litefs-url", required=True)
@click.option("--litefs-data-dir", required=True)
@click.option("--status", "status_file", required=True)
@click.option("--workdir", required=True)
def run_offsite(data_db, litefs_url, litefs_data_dir, status_file, workdir):
    """Upload data.db's transactions off-site (started by the supervisor)."""
    from primary.offsite import uploader

    try:
        uploader.run(data_db, litefs_url, litefs_data_dir, status_file, workdir)
    except ConfigError as exc:
        raise click.ClickException(str(exc))


@commands.command("run-backups", hidden=True)
@click.option("--data-db", required=True)
@click.option("--to", "dest", required=True)
@click.option("--keep", type=int, required=True)
@click.option("--interval", type=float, required=True)
def run_backups(data_db, dest, keep, interval):
    """Take a backup every INTERVAL seconds (started by the supervisor)."""
    import threading

    from broadsheet.log import log
    from primary import backup as backups

    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    while not stopped.wait(interval):
        try:
            taken = backups.take(data_db, dest, keep)
            log("backups", f"{taken.path.name}: data.db TXID {taken.txid}")
        except Exception as exc:  # say so, and try again next time
            log("backups", f"backup failed: {exc}")


@commands.command("run-publisher", hidden=True)
@click.option("--data-db", required=True)
@click.option("--public-db", required=True)
@click.option("--litefs-url", help="The private LiteFS node's HTTP API, for its /events stream.")
@click.option("--watermark", help="File to record how far publishing has got, for bookmarks.")
@click.option("--public-litefs-data-dir", help="The public LiteFS node's data directory: sign every release.")
def run_publisher(data_db, public_db, litefs_url, watermark, public_litefs_data_dir):
    """Run the publisher (started by the supervisor on the primary)."""
    from primary.publisher import Publisher, Runner

    try:
        publisher = Publisher(data_db, public_db, watermark)
        if public_litefs_data_dir:
            publisher.sign_releases(public_litefs_data_dir)
    except sqlite_errors() as exc:  # not a data.db: say which, and let the supervisor try again
        raise click.ClickException(f"{data_db} or {public_db}: {_sqlite_message(exc)}")
    from primary.publisher.pacing import Pacer
    from primary.settings import settings

    conf = settings()
    runner = Runner(publisher, litefs_url, pacer=Pacer(conf.read_nodes, conf.read_nodes_dns, conf.read_node_port))

    def stop(signum, frame):
        runner.stopped.set()
        runner.wake.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    runner.run()
    publisher.close()
