"""Every CLI error is a message, never a traceback: each command of the
``broadsheet`` command tree, with the bad inputs a person is likely to give
it (no cluster, a cluster that has gone, a missing file, a directory where a
file goes, a file that is not SQLite, an unreachable URL, a bad number),
exits non-zero with one ``Error:`` line.

Nothing here starts a node: a command that would (``up``, the role
entry points) is given only inputs that it refuses before starting."""

from __future__ import annotations

import json
import socket
from contextlib import closing

import click
import pytest
from click.testing import CliRunner

from broadsheet.cli import all_commands

# Started by the supervisor with arguments it makes, never by a person:
# only their bad numbers are tried (a bad file makes them log and retry,
# as they should).
SUPERVISED = {"run-backups", "run-publisher", "run-offsite"}
# Would start a node or a cluster when given good inputs.
STARTS = {"up", "primary", "replica", "standby"} | SUPERVISED

# Environment variables a command reads for its defaults: unset, so that
# nothing of this machine's (or of another test's) reaches the commands.
ENV = (
    "BROADSHEET_DIR", "BROADSHEET_URL", "BROADSHEET_TOKEN", "BROADSHEET_ROOT", "BROADSHEET_TEAM_DB",
    "BROADSHEET_CLUSTER_ID", "DATASETTE_SECRET", "BROADSHEET_BACKUP_URL", "BROADSHEET_BACKUP_KEY",
    "BROADSHEET_BACKUP_KEY_FILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
)


def closed_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """The bad inputs, as files and URLs."""
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "a-directory").mkdir()
    (tmp / "notes.db").write_text("id,body\n1,not a database\n" * 50)
    (tmp / "rows.csv").write_text("id,name\n1,one\n")
    (tmp / "empty").mkdir()  # a --dir with no cluster in it
    # A cluster.json left by a cluster that is gone: its files deleted,
    # its processes and ports closed.
    gone = tmp / "gone"
    gone.mkdir()
    url = f"http://127.0.0.1:{closed_port()}"
    (gone / "cluster.json").write_text(json.dumps({
        "pid": 2**22 + 1,  # above Linux's highest pid: no such process
        "primary": {
            "root": str(gone / "primary"), "datasette": url, "control": url,
            "secret_file": str(gone / "primary" / "secret"), "data_db": str(gone / "primary" / "data.db"),
            "public_db": str(gone / "primary" / "public.db"), "private_litefs": url,
            "backups": str(gone / "primary" / "backups"), "public_litefs": url,
        },
        "replicas": [], "standby": None, "logs": str(gone / "logs"),
    }))
    yield {
        "missing": str(tmp / "missing.db"),
        "missing-directory": str(tmp / "no-such-directory" / "missing.db"),
        "directory": str(tmp / "a-directory"),
        "not-sqlite": str(tmp / "notes.db"),
        "csv": str(tmp / "rows.csv"),
        "scratch": str(tmp / "scratch.db"),  # a file a command may make
        "no-cluster": str(tmp / "empty"),
        "gone": str(gone),
        "unreachable": url,
        "number": "banana",
        "file": str(tmp / "notes.db"),  # a file where a directory goes
    }
    # No command made what it was refused.
    made = {p.name for p in tmp.iterdir()} - {"scratch.db"}
    assert made == {"a-directory", "empty", "gone", "notes.db", "rows.csv"}
    assert [p.name for p in (tmp / "gone").iterdir()] == ["cluster.json"]
    assert not list((tmp / "empty").iterdir()) and not list((tmp / "a-directory").iterdir())


def leaves(group: click.Group, path: tuple[str, ...] = ()):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from leaves(command, (*path, name))
        else:
            yield (*path, name), command


COMMANDS = dict(leaves(all_commands()))


def arguments(command: click.Command, bad: dict, **given: str) -> list[str]:
    """Values for the command's required arguments: ``given`` by name, else
    good enough ones."""
    args = []
    for param in command.params:
        if isinstance(param, click.Argument) and param.required:
            if param.name in given:
                args.append(given[param.name])
            elif isinstance(param.type, click.Path):
                args.append(bad["csv"])
            elif param.name == "url":
                args.append(bad["unreachable"])
            else:
                args.append("t")
    return args


def options(command: click.Command) -> dict[str, click.Option]:
    return {p.name: p for p in command.params if isinstance(p, click.Option)}


def cases(path: tuple[str, ...], command: click.Command, bad: dict):
    """(label, argv, stdin, env) for every likely bad input of ``command``."""
    base = [*path, *arguments(command, bad)]
    opts = options(command)
    if "password_stdin" in opts:
        base.append("--password-stdin")
    stdin = "a password\n"

    def case(label, *extra, env=None, argv=None):
        return (label, argv or [*base, *extra], stdin, env or {})

    name = path[-1]
    if name not in STARTS:
        if "root" in opts:
            yield case("no cluster", "--dir", bad["no-cluster"])
            yield case("a cluster that has gone", "--dir", bad["gone"])
            yield case("a file as --dir", "--dir", bad["file"])
        # A missing data.db is an error; a missing team.db is made (a new
        # primary has none until its first team member), in a directory
        # that exists.
        for option, missing in (("data_db", "missing"), ("team_db", "missing-directory")):
            if option in opts:
                flag = opts[option].opts[0]
                extra = ["--to", bad["no-cluster"]] if name == "backup" else []
                for what in (missing, "directory", "not-sqlite"):
                    yield case(f"{flag} {what}", flag, bad[what], *extra)
        if "url" in opts:
            yield case("an unreachable --url", "--url", bad["unreachable"], "--token", "dstok_x")
        if "dest" in opts:
            yield case("a file as --to", "--to", bad["file"], "--data-db", bad["not-sqlite"])
        for param in command.params:
            if isinstance(param, click.Argument) and isinstance(param.type, click.Path):
                # Against a cluster's state, so that the file is what is wrong.
                where = ["--dir", bad["gone"]] if "root" in opts else []
                for what in ("missing", "directory", "not-sqlite"):
                    argv = [*path, *arguments(command, bad, **{param.name: bad[what]}), *where]
                    yield case(f"{param.name.upper()} {what}", argv=argv)
        if name == "healthcheck":
            yield case("an unreachable URL")
    if name == "run-publisher":
        # A data.db that is not yet there is made (a new primary's mount).
        for what in ("directory", "not-sqlite"):
            yield case(f"--data-db {what}", "--data-db", bad[what], "--public-db", bad["scratch"])
    for option in opts.values():
        if isinstance(option.type, (click.types.IntParamType, click.types.FloatParamType)):
            required = [v for o in opts.values() if o.required and o is not option for v in (o.opts[0], "1")]
            yield case(f"{option.opts[0]} not a number", option.opts[0], bad["number"], argv=[*base, *required,
                       option.opts[0], bad["number"]])
    if "from_url" in opts:
        # Off-site backups (restore --from, backups list): no key; another
        # key's store that does not answer; a moment that is not one.
        key = "A" * 43 + "="
        store = {"AWS_ENDPOINT_URL_S3": bad["unreachable"], "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
        yield case("--from without a key", "--from", "s3://backups/team", env=store)
        yield case("--from a store that does not answer", "--from", "s3://backups/team",
                   env={**store, "BROADSHEET_BACKUP_KEY": key})
        yield case("--from not an s3:// URL", "--from", "https://backups/team", env={"BROADSHEET_BACKUP_KEY": key})
        if "at" in opts:
            yield case("--at not a moment", "--from", "s3://backups/team", "--at", "yesterday",
                       env={**store, "BROADSHEET_BACKUP_KEY": key})
    if name == "new-key":
        yield case("--to a file that exists", "--to", bad["file"])
        yield case("--to a missing directory", "--to", bad["missing-directory"])
    if name == "run-offsite":
        yield case("no BROADSHEET_BACKUP_URL", "--data-db", bad["scratch"], "--litefs-url", bad["unreachable"],
                   "--litefs-data-dir", bad["no-cluster"], "--status", bad["scratch"], "--workdir", bad["no-cluster"])
    if name in ("primary", "replica", "standby"):
        env = {"DATASETTE_SECRET": "s", "BROADSHEET_CLUSTER_ID": "c", "BROADSHEET_PORT": bad["number"],
               "BROADSHEET_STANDBY_PORT": bad["number"], "BROADSHEET_ROOT": bad["no-cluster"]}
        yield case("a bad number in its environment", env=env)


# The bad inputs exist only once the fixture has run: tests are
# parametrized by command and case number, and make the case themselves.
NAMES = {k: k for k in ("missing", "missing-directory", "directory", "not-sqlite", "csv", "scratch", "no-cluster",
                        "gone", "unreachable", "number", "file")}


def all_cases():
    for path, command in COMMANDS.items():
        for n, (label, *_) in enumerate(cases(path, command, NAMES)):
            yield pytest.param(path, n, id=f"{' '.join(path)}: {label}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path, n", list(all_cases()))
def test_a_bad_input_is_a_one_line_error(path, n, bad, tmp_path, monkeypatch):
    label, argv, stdin, env = list(cases(path, COMMANDS[path], bad))[n]
    monkeypatch.chdir(tmp_path)  # the default --dir, .cluster, is nobody's
    result = CliRunner().invoke(all_commands(), argv, input=stdin, env={**{k: None for k in ENV}, **env})
    shown = f"broadsheet {' '.join(argv)}\n{result.output}"
    assert "Traceback" not in result.output, shown
    assert isinstance(result.exception, SystemExit), (shown, result.exc_info)
    assert result.exit_code != 0, shown
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), shown


def test_every_command_is_tried():
    assert {path for path in COMMANDS for _ in cases(path, COMMANDS[path], NAMES)} == set(COMMANDS)


# Every number, flag and address a read node reads, each with a bad value:
# refused before anything starts, by a message that names the variable.
READ_NODE_SETTINGS = {
    "BROADSHEET_PORT": "80a",
    "BROADSHEET_LITEFS_ADDR": "localhost",
    "BROADSHEET_LTX_COMPRESS": "maybe",
    "BROADSHEET_BOOKMARK_TIMEOUT": "5s",
    "BROADSHEET_STALL_TIMEOUT": "0",
    "BROADSHEET_CACHE_MAX_AGE": "1m",
    "BROADSHEET_MAX_BOOKMARK_WAITS": "0",
    "BROADSHEET_MAX_SQL_CONCURRENCY": "two",
    "BROADSHEET_MAX_POSITION_STREAMS": "-1",
    "BROADSHEET_CACHE_BYTES": "64MiB",
    "BROADSHEET_CACHE_MAX_ENTRY": "-1",
    "BROADSHEET_READ_NODE_PLUGINS": "not a package!",
    "BROADSHEET_READ_NODE_PLUGINS_CONFIG": "{unclosed",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("variable", READ_NODE_SETTINGS)
def test_a_bad_read_node_setting_names_its_variable(variable, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {**{k: None for k in ENV}, "BROADSHEET_ROOT": str(tmp_path), variable: READ_NODE_SETTINGS[variable]}
    result = CliRunner().invoke(all_commands(), ["replica"], env=env)
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.output
    assert result.stderr.startswith(f"Error: {variable}") and result.stderr.count("\n") == 1, result.stderr
