"""A small client for the primary's control plane, used by the CLI, the
benchmarks, the team's Datasette (AsyncControlClient) and anyone scripting
broadsheet."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import httpx


class ControlError(Exception):
    """The control plane refused (``status``: its HTTP status) or did not
    answer (``status`` 0)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


@dataclass
class _Routes:
    """The control plane's routes, one method each. A method returns what
    ``_call`` returns: the JSON answer (ControlClient), or an awaitable of
    it (AsyncControlClient)."""

    url: str
    token: str
    timeout: float = 30.0

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def _call(self, method: str, path: str, **kwargs):
        raise NotImplementedError

    def _answer(self, response: httpx.Response):
        if response.status_code >= 400:
            raise ControlError(response.status_code, _error_message(response))
        try:
            return response.json()
        except ValueError:
            raise ControlError(response.status_code, f"{self.url} is not a broadsheet control plane (no JSON)") from None

    def _unreachable(self, exc: httpx.HTTPError) -> ControlError:
        return ControlError(0, f"cannot reach the control plane at {self.url}: {exc}")

    def tables(self):
        return self._call("GET", "/tables")

    def publish(self, table: str, public: bool = True, spec: dict | None = None):
        """Flip ``table``; ``spec`` ({columns, exclude_columns, where}) says
        what of it to publish (default: the whole table)."""
        verb = "publish" if public else "unpublish"
        return self._call("POST", f"/tables/{_segment(table)}/{verb}", json=spec or None)

    def schedule(self, table: str, at: str, public: bool = True, spec: dict | None = None):
        """Publish (with ``spec``) or unpublish ``table`` at ``at`` (ISO 8601 with a zone)."""
        body = {"table": table, "operation": "publish" if public else "unpublish", "at": at}
        return self._call("POST", "/schedule", json={**body, **({"spec": spec} if spec else {})})

    def scheduled(self):
        return self._call("GET", "/schedule")

    def cancel_scheduled(self, entry_id: int):
        return self._call("DELETE", f"/schedule/{int(entry_id)}")

    def set_metadata(self, table: str | None, values: dict):
        """Set the instance's metadata (``table`` None) or a table's."""
        path = "/metadata" if table is None else f"/tables/{_segment(table)}/metadata"
        return self._call("PUT", path, json=values)

    def metadata(self):
        return self._call("GET", "/metadata")

    def preview(self, table: str, spec: dict | None = None):
        return self._call("POST", f"/tables/{_segment(table)}/preview", json=spec or None)

    def save_query(self, name: str, sql: str, title: str | None = None, description: str | None = None):
        """Save (or replace) a query; read nodes serve it at /public/NAME."""
        body = {"name": name, "sql": sql, "title": title, "description": description}
        return self._call("POST", "/queries", json={k: v for k, v in body.items() if v is not None})

    def remove_query(self, name: str):
        return self._call("DELETE", f"/queries/{_segment(name)}")

    def queries(self):
        return self._call("GET", "/queries")

    def query_log(self, name: str | None = None):
        return self._call("GET", "/queries/log", params={"name": name} if name else None)

    def bookmark(self, private_txid: int | None = None):
        """The public TXID holding data.db up to ``private_txid`` (default: now)."""
        return self._call("GET", "/bookmarks", params={"private_txid": private_txid} if private_txid is not None else None)

    def audit(self, limit: int = 100):
        return self._call("GET", "/audit", params={"limit": limit})

    def health(self):
        return self._call("GET", "/health")

    def nodes(self):
        return self._call("GET", "/nodes")

    def publishes(self, limit: int = 20):
        """The newest propagation records, newest first."""
        return self._call("GET", "/publishes", params={"limit": limit})

    def propagation(self, txid: int, wait: float = 0):
        return self._call("GET", f"/publishes/{txid}", params={"wait": wait})

    def watch_state(self, limit: int = 20, seconds: int = 300):
        return self._call("GET", "/watch/state", params={"limit": limit, "seconds": seconds})


class ControlClient(_Routes):
    """For scripts and the CLI: each call waits for its answer."""

    def adopt(
        self,
        path: str | os.PathLike,
        metadata: str | None = None,
        replace: bool = False,
        publish: list[str] | None = None,
        progress: Callable[[int], None] | None = None,
        name: str | None = None,
    ):
        """Upload the SQLite file ``path`` for adoption into data.db, with
        a metadata document's text; ``progress`` is told each chunk's bytes
        as they are sent. The answer waits for data.db's transaction (and
        for the publishes asked for)."""
        params = {"replace": "true" if replace else "false"}
        if publish:
            params["publish"] = ",".join(publish)
        data = {"name": name or os.path.basename(path)}
        if metadata is not None:
            data["metadata"] = metadata
        with open(path, "rb") as raw:
            upload = _Counted(raw, progress or (lambda n: None))
            try:
                response = httpx.post(
                    f"{self.url}/adoptions", params=params, data=data, headers=self._headers(),
                    files={"file": (data["name"], upload, "application/vnd.sqlite3")},
                    # The answer comes once data.db's transaction is done.
                    timeout=httpx.Timeout(self.timeout, read=max(self.timeout, 600)),
                )
            except httpx.HTTPError as exc:
                raise self._unreachable(exc) from None
        return self._answer(response)

    def adoptions(self, limit: int = 100):
        return self._call("GET", "/adoptions", params={"limit": limit})

    def _call(self, method: str, path: str, **kwargs):
        try:
            response = httpx.request(
                method, f"{self.url}{path}", headers=self._headers(), timeout=self.timeout, **kwargs
            )
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        return self._answer(response)

    def events(self) -> Iterator[tuple[str, dict]]:
        """Follow the server-sent-event stream: (event, data) pairs."""
        try:
            with httpx.stream(
                "GET", f"{self.url}/events", headers=self._headers(), timeout=httpx.Timeout(10, read=None)
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ControlError(response.status_code, _error_message(response))
                event = None
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event:
                        yield event, json.loads(line[5:])
                        event = None
        except httpx.HTTPError as exc:
            raise ControlError(0, f"cannot follow the control plane's events at {self.url}: {exc}") from None


class _Counted:
    """A binary file that reports each chunk read from it (an upload's progress)."""

    def __init__(self, raw, report: Callable[[int], None]):
        self.raw, self.report = raw, report

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.report(len(data))
        return data

    def __getattr__(self, name):  # fileno, seek, tell: httpx sizes the upload with them
        return getattr(self.raw, name)


def _error_message(response: httpx.Response) -> str:
    """The control plane's ``error``, else the body as it came."""
    try:
        body = response.json()
    except ValueError:
        return response.text
    return (body.get("error") if isinstance(body, dict) else None) or response.text


class AsyncControlClient(_Routes):
    """For code on an event loop (the team's Datasette): ``await
    client.publish(...)``."""

    async def _call(self, method: str, path: str, **kwargs):
        try:
            async with httpx.AsyncClient(timeout=self.timeout, headers=self._headers()) as client:
                response = await client.request(method, f"{self.url}{path}", **kwargs)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        return self._answer(response)


def _segment(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


def describe(record: dict) -> str:
    """``txid 41 (planes published by alice): replica-1 ✓ 41 ms, replica-2 …``"""
    parts = [f"{n['name']} ✓ {n['ms']:.0f} ms" if n["arrived"] else f"{n['name']} …" for n in record["nodes"]]
    what = f" ({'; '.join(record['changes'])})" if record.get("changes") else ""
    return f"txid {record['txid']}{what}: " + ", ".join(parts)
