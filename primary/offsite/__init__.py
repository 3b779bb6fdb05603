"""Off-site backups: data.db's transactions, encrypted on the primary, in
an S3-compatible store, and restores to any TXID or moment from them.

- ``crypto``: the key, and each object sealed with AES-256-GCM in chunks
  bound to the object's name.
- ``objects``: object names (generation, epoch, level, TXIDs, times: never
  a table name or data) and what an object holds (pages per transaction).
- ``store``: the S3 client (``BROADSHEET_BACKUP_URL``, the usual ``AWS_*``).
- ``uploader``: the supervised service on the primary (``run-offsite``):
  follows data.db's commits through LiteFS, uploads, compacts, prunes.
- ``restore``: what can be restored (``backups list``), and restoring.
- ``status``: the uploader's status file, read by ``/health``.

See docs/operations.md (Off-site backups) for the design and its reasons.
"""
