"""The publisher: keeps public.db equal to the published projection of
data.db.

One publish cycle is one SQLite transaction on public.db, so one LTX: a read
node shows the state before a cycle or after it, never a mix. The cycle reads
data.db through ``ATTACH ... AS src`` inside that transaction, so everything
it copies comes from one data.db snapshot.

- ``publisher``: the ``Publisher`` (one cycle: plan, apply, record, follow up)
- ``plan``: what a cycle does; ``copy``: doing it in public.db
- ``triggers``: the change log on data.db, and failing closed what lost it
- ``published_queries``: the saved queries a cycle leaves in public.db
- ``cycle``: the cycle record and its log file; ``watermark``: how far it
  has got; ``withdrawals``: what it took off the read nodes, and why
- ``runner``: the long-running process that follows data.db
- ``events``: the team Datasette's events, one per audit log entry, with
  the TXIDs of the cycle that held it (imported by the team's Datasette
  alone: not re-exported here)
"""

from .cycle import Cycle, CycleLog, cycle_log_path
from .publisher import Publisher
from .runner import Runner
from .watermark import Watermark
from .withdrawals import Withdrawal, Withdrawals, withdrawals_path

__all__ = [
    "Cycle", "CycleLog", "Publisher", "Runner", "Watermark", "Withdrawal", "Withdrawals", "cycle_log_path",
    "withdrawals_path",
]
