"""Unmounts a LiteFS mount that its supervisor can no longer unmount.

When a supervisor is killed (SIGKILL, OOM), the kernel signals every child at
once (PR_SET_PDEATHSIG): LiteFS cannot unmount while the processes using its
mount are still closing their files, and nobody is left to retry. One janitor
per mount watches the supervisor and LiteFS from its own session, and once
both are gone it unmounts, lazily, what is left.

When LiteFS dies while its supervisor lives, the janitor leaves at once
without unmounting: the supervisor cleans up and starts a new LiteFS (with a
new janitor) on the same mount point, which this one must not touch. A
janitor still waiting when a new supervisor claims the directory is killed
by it (``Supervisor.claim``) for the same reason.

    python -m broadsheet.janitor SUPERVISOR_PID LITEFS_PID MOUNT
"""

from __future__ import annotations

import os
import signal
import sys
import time

from .litefs import unmount


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(supervisor: int, litefs: int, mount: str, poll: float = 0.25) -> None:
    while alive(supervisor) and alive(litefs):
        time.sleep(poll)
    if alive(supervisor):
        return  # LiteFS stopped while its supervisor lives: the supervisor cleans up (and may remount).
    deadline = time.monotonic() + 15
    while alive(litefs) and time.monotonic() < deadline:
        time.sleep(poll)
    if alive(litefs):
        os.kill(litefs, signal.SIGKILL)
        time.sleep(poll)
    unmount(mount)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
