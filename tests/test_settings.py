"""The primary's settings: every one is read through broadsheet.config.Env,
so a bad value is an error that names the variable, raised when the node
starts rather than as a traceback in one of its processes. Fast: no
processes, no files."""

from __future__ import annotations

import pytest

from broadsheet.config import ConfigError
from primary.node import PrimaryNode
from primary.settings import Settings

BAD = [
    ("BROADSHEET_MAX_BODY", "10MiB"),
    ("BROADSHEET_MAX_BODY", "0"),
    ("BROADSHEET_PAGE_SIZE", "16k"),
    ("BROADSHEET_PAGE_SIZE", "1000"),  # not a power of two: SQLite would ignore it
    ("BROADSHEET_READ_NODE_PORT", "eighty"),
    ("BROADSHEET_READ_NODE_PORT", "70000"),
    ("BROADSHEET_DISCOVERY_INTERVAL", "2s"),
    ("BROADSHEET_DISCOVERY_INTERVAL", "0"),
    ("BROADSHEET_STANDBY_WAIT_TIMEOUT", "soon"),
    ("BROADSHEET_STANDBY_URL", "standby-private:8006"),
    ("BROADSHEET_PUBLIC_LITEFS_URL", "127.0.0.1:20203"),
    ("BROADSHEET_DATASETTE_URL", "localhost:8001"),
    ("BROADSHEET_CONTROL_URL", "localhost:8004"),
    ("BROADSHEET_READ_NODES", "{"),
    ("BROADSHEET_READ_NODES", '[{"name": "a"}]'),  # no url
]


@pytest.mark.parametrize("name, value", BAD)
def test_a_bad_value_is_a_config_error_naming_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


@pytest.mark.parametrize("name, value", BAD)
def test_a_bad_value_stops_the_primary_before_anything_starts(tmp_path, name, value):
    with pytest.raises(ConfigError, match=name):
        PrimaryNode.from_env({"DATASETTE_SECRET": "s", "BROADSHEET_ROOT": str(tmp_path), name: value})


def test_the_defaults_make_the_local_cluster_work():
    conf = Settings.from_env({})
    assert conf.max_body == 10 * 1024 * 1024 and conf.page_size == 16384
    assert conf.read_node_port == 8001 and conf.discovery_interval == 2.0 and conf.standby_wait == 5.0
    assert conf.read_nodes == () and conf.read_nodes_dns is None and conf.standby_url == ""


def test_good_values_are_read():
    conf = Settings.from_env(
        {
            "BROADSHEET_MAX_BODY": "1048576",
            "BROADSHEET_PAGE_SIZE": "4096",
            "BROADSHEET_DISCOVERY_INTERVAL": "0.5",
            "BROADSHEET_STANDBY_URL": "http://standby-private:8006/",
            "BROADSHEET_READ_NODES": '[{"name": "a", "url": "http://a:8001", "region": "ams"}]',
        }
    )
    assert (conf.max_body, conf.page_size, conf.discovery_interval) == (1048576, 4096, 0.5)
    assert conf.standby_url == "http://standby-private:8006"
    assert [(n.name, n.url, n.region) for n in conf.read_nodes] == [("a", "http://a:8001", "ams")]
