"""The team's forms: the Make public page's spec form, and the "What read
nodes show" metadata form."""

from __future__ import annotations

from dataclasses import dataclass

from .. import store
from ..store import PublishSpec
from . import control_plane
from .data_db import metadata_of


@dataclass(frozen=True)
class SpecForm:
    """The Make public page's form, and the PublishSpec it means: ticked
    columns, a row filter, masks (a column's "mask" field), and whether
    columns added later stay private.

    Everything ticked publishes the whole table (no column list), so that
    columns added later are published too, unless ``freeze_columns`` asks
    for an explicit list; some columns unticked publish all but those
    (``exclude_columns``), or exactly the ticked ones with ``freeze_columns``.
    """

    ticked: tuple[str, ...]
    where: str = ""
    freeze_columns: bool = False
    masks: tuple[tuple[str, str], ...] = ()  # (column, expression): the "mask:<column>" fields filled in

    @classmethod
    def from_post(cls, fields: dict[str, list[str]], rowid_alias: str | None) -> "SpecForm":
        ticked = fields.get("columns", [])
        # The INTEGER PRIMARY KEY's checkbox is disabled, so never sent.
        if rowid_alias is not None and rowid_alias not in ticked:
            ticked = [rowid_alias, *ticked]
        masks = tuple(
            (name.removeprefix("mask:"), values[0].strip())
            for name, values in fields.items()
            if name.startswith("mask:") and values and values[0].strip()
        )
        return cls(
            tuple(ticked), (fields.get("where") or [""])[0].strip(), bool(fields.get("freeze_columns")), masks
        )

    @classmethod
    def from_spec(cls, spec: PublishSpec, columns: list[str]) -> "SpecForm":
        if spec.columns is not None:
            ticked = [c for c in columns if c in spec.columns]
        else:
            ticked = [c for c in columns if c not in spec.exclude_columns]
        return cls(tuple(ticked), spec.where or "", spec.columns is not None, spec.masks)

    @property
    def masked(self) -> dict[str, str]:
        return dict(self.masks)

    def spec(self, columns: list[str]) -> PublishSpec:
        """Raises SpecError for a form no spec can come from (nothing ticked)."""
        unticked = [c for c in columns if c not in self.ticked]
        data: dict = {}
        if self.freeze_columns:
            data["columns"] = [c for c in columns if c in self.ticked] + [c for c in self.ticked if c not in columns]
        elif unticked:
            data["exclude_columns"] = unticked
        if self.where:
            data["where"] = self.where
        if self.masks:
            data["masks"] = dict(self.masks)
        return PublishSpec.from_dict(data)


@dataclass(frozen=True)
class MetadataForm:
    """The "What read nodes show" form: the six metadata fields of a table
    or of the instance (store.METADATA_FIELDS), and what became of saving
    them: ``saved``, or the ``error`` (and its HTTP ``status``) with the
    team's input kept to correct it."""

    values: dict
    saved: bool = False
    error: str | None = None
    status: int = 200

    @classmethod
    async def save(cls, datasette, request, table: str) -> "MetadataForm":
        """Save the posted fields (merged, as the control plane's PUT does:
        a field left out keeps its value, an empty one is cleared). A bad
        value changes nothing."""
        posted = {k: v.strip() for k, v in (await request.post_vars()).items() if k != "csrftoken"}
        target = None if table == store.INSTANCE else table
        try:
            answer = await control_plane.ask(
                datasette, request.actor, lambda client: client.set_metadata(target, posted), table
            )
            return cls(answer, saved=True)
        except store.PublishError as exc:
            current = await metadata_of(datasette, table)
            return cls({**current, **posted}, error=exc.message, status=exc.status)
