"""The standby: a second node of the private side that keeps an up-to-date
copy of data.db, and can be promoted to primary when the primary is lost.

It joins the *private* cluster as a LiteFS replica (never a candidate), over
a network read nodes are not on: the primary's private LiteFS listens on an
address of that network (``BROADSHEET_PRIVATE_LITEFS_ADDR``), the standby's
own LiteFS API on its loopback. Its LiteFS reaches the primary only through
the guard (``guard.py``), which never lets a snapshot move
the standby backwards: a primary started on an empty volume cannot wipe it.
Beside it runs a small status API (``api.py``, on the
private network too): its data.db position, identity and the commit time of
its newest transaction (``GET /status``, which the primary's control plane
shows on ``/health``), and ``GET /wait?txid=N`` that answers once the
standby has data.db TXID N (``Broadsheet-Wait: standby``), recording the
highest TXID it acknowledged in ``standby-acknowledged.json`` under its
root, outside anything LiteFS writes.

``broadsheet promote`` on the standby records the promotion
(``promoted.json`` under its root, with a new epoch), refusing a copy older
than what the standby acknowledged, and tells the running ``broadsheet
standby`` (SIGUSR1) to become the primary of both clusters on the same
directory: its private LiteFS restarts as the candidate (data.db continues
from the TXID it had), the public LiteFS starts with the public cluster's
id (derived from the cluster id, so read nodes accept it), then the
publisher rebuilds public.db from data.db, the team's Datasette and the
control plane start. Started again later, it runs as primary.

Fencing: LiteFS's static lease cannot stop an old primary from coming back
as a second primary, nor an empty one from replacing the standby's copy. A
node about to start as primary asks each of its peers' private LiteFS
(``BROADSHEET_PEERS``) whether it is primary, and its standby whether it
holds a newer data.db than its own (``check_no_newer_copy``), and refuses
to start if either is so; data.db's epoch (``_public_cluster.epoch``),
raised by every promotion, says which primary is newer.

Modules: ``node`` (what a standby runs), ``api`` (its status and wait API),
``guard`` (its relay of data.db's replication stream), ``acknowledged``
(what it acknowledged, and the primary's wait for that), ``fencing`` (the
checks a node makes before it starts as primary), ``promoted`` (the record
of a promotion), ``promotion`` (promoting a standby). Nothing is imported
here: the primary node (primary/node.py) uses ``fencing`` and ``promoted``,
and ``node`` and ``promotion`` use the primary node.
"""
