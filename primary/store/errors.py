"""Why a publish, an unpublish or a metadata change cannot be carried out,
each error with the HTTP status a client should see."""

from __future__ import annotations


class PublishError(Exception):
    """A publish or unpublish request that cannot be carried out. ``status`` is
    the HTTP status a client should see."""

    status = 400

    def __init__(self, message: str, table: str | None = None):
        super().__init__(message)
        self.message = message
        self.table = table


class TableNotFound(PublishError):
    status = 404


class InternalTable(PublishError):
    status = 403


class DependsOnPrivate(PublishError):
    """A view that reads tables which are not public."""

    status = 409
