"""Saving and removing a saved query, as every team interface does it (the
control plane, the team's Datasette): one data.db transaction with a log
entry (primary/store/queries.py), then a bounded wait for the publisher, so
that the caller learns the public TXID that holds the change and whether the
query is public after all (as primary/publishing.py does for a flip)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

from broadsheet.litefs import Pos

from . import publishing, store
from .settings import settings


@dataclass(frozen=True)
class Outcome:
    """A save or remove, and the public TXID that holds it (None without
    waiting); ``withdrawn`` says why the publisher left a saved query out
    after all (its table unpublished meanwhile, say)."""

    name: str
    changed: bool
    private_txid: int
    public_txid: int | None
    published: bool
    withdrawn: str | None = None


async def save_and_wait(query: store.queries.SavedQuery, actor: str, wait: bool = True, timeout: float = 10.0) -> Outcome:
    """Save a query (QueryError if it cannot be) and wait, bounded, for the
    publisher (publishing.PublishTimeout), as publishing a table does."""
    conf = settings()

    def work():
        data, public = store.connect(conf.data_db), None
        try:
            if not os.path.exists(conf.public_db):
                why = "public.db does not exist yet: the publisher has not run"
                raise store.queries.QueryError(why, query.name, status=503)
            public = store.queries.connect_public(conf.public_db)
            return store.queries.save(data, public, query, actor)
        finally:
            data.close()
            if public is not None:
                public.close()

    changed, log_id = await asyncio.to_thread(work)
    return await _wait(query.name, changed, log_id, wait, timeout)


async def remove_and_wait(name: str, actor: str, wait: bool = True, timeout: float = 10.0) -> Outcome:
    def work():
        data = store.connect(settings().data_db)
        try:
            return store.queries.remove(data, name, actor)
        finally:
            data.close()

    log_id = await asyncio.to_thread(work)
    return await _wait(name, True, log_id, wait, timeout)


async def _wait(name: str, changed: bool, log_id: int | None, wait: bool, timeout: float) -> Outcome:
    conf = settings()
    private_txid = Pos.read(conf.data_db).txid  # after our commit: at least its TXID
    public_txid = None
    if wait:
        public_txid = (await publishing.wait_published(private_txid, timeout)).public_txid

    def look():
        data = store.connect(conf.data_db)
        try:
            if log_id is not None and public_txid is not None:
                store.queries.log_txids(data, log_id, private_txid, public_txid)
            row = next((q for q in store.queries.saved(data) if q["name"] == name), None)
        finally:
            data.close()
        public = store.queries.connect_public(conf.public_db)
        try:
            return row, name in store.queries.published(public)
        finally:
            public.close()

    row, is_public = await asyncio.to_thread(look)
    return Outcome(name, changed, private_txid, public_txid, is_public, row["withdrawn"] if row else None)
