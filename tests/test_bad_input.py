"""Publishing something that cannot be published: a clear error, no change."""

import pytest
from click.testing import CliRunner

from broadsheet.cli import cli
from primary import state


def snapshot(cluster, db):
    return (
        state.public_tables(db),
        db.execute("SELECT count(*) FROM _public_audit_log").fetchone()[0],
        cluster.public_pos().txid,
    )


@pytest.mark.parametrize(
    "table, message",
    [
        ("no_such_table", "does not exist"),
        ("_public_tables", "internal table"),
        ("_public_audit_log", "internal table"),
        ("sqlite_master", "internal table"),
        ("sqlite_sequence", "internal table"),
        ('bad "quoted\' ñame 🙂', "does not exist"),
        ("", "non-empty"),
    ],
)
@pytest.mark.parametrize("command", ["publish", "unpublish"])
def test_bad_table_names_get_a_clear_error(cluster, db, table, message, command):
    before = snapshot(cluster, db)
    result = CliRunner().invoke(cli, [command, table, "--data-db", str(cluster.primary.data_db)])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert snapshot(cluster, db) == before


def test_publishing_twice_changes_nothing_the_second_time(cluster, db):
    runner = CliRunner()
    result = runner.invoke(cli, ["publish", "airports", "--data-db", str(cluster.primary.data_db)])
    assert result.exit_code == 0 and "already public" in result.output
    before = snapshot(cluster, db)
    result = runner.invoke(cli, ["publish", "airports", "--data-db", str(cluster.primary.data_db)])
    assert snapshot(cluster, db) == before
