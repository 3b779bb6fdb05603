"""The local cluster's state file, ``cluster.json`` in its directory: what
``broadsheet up`` (local/cluster.py) is running and where, read by every
command that defaults to the local cluster (its data.db, control plane,
secret)."""

from __future__ import annotations

import json
from pathlib import Path

CLUSTER_FILE = "cluster.json"

# Where ``broadsheet up`` keeps a local cluster unless told otherwise (--dir,
# BROADSHEET_DIR).
DEFAULT_DIR = ".cluster"


def load_state(root: Path) -> dict:
    """What the cluster running in ``root`` wrote; FileNotFoundError, with
    a message for people, when none runs there."""
    path = Path(root) / CLUSTER_FILE
    if not path.exists():
        raise FileNotFoundError(f"no running cluster in {root} (start one with: broadsheet up)")
    return json.loads(path.read_text())


def local_secret(info: dict) -> str:
    """The local cluster's shared secret (see PrimaryNode.secret);
    FileNotFoundError, with a message for people, when it has gone."""
    path = Path(info["primary"]["secret_file"])
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise FileNotFoundError(f"the local cluster's secret {path} is gone (was its directory removed?)") from None
