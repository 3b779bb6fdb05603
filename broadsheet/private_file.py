"""Files only their owner may read, made once: a node's secret, the local
cluster's login."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def private_file(path: Path, make: Callable[[], str]) -> str:
    """The contents of ``path`` (stripped), made with ``make()`` if absent:
    mode 0600 from the start, written whole or not at all, and never over a
    file another process made first."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fp:
            fp.write(make() + "\n")
            fp.flush()
            os.fsync(fp.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()
