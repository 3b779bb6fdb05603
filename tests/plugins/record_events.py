"""A team's own Datasette plugin, as a test uses it: every broadsheet event
it sees, one JSON line each, in events.jsonl beside this file (where a
real one would post to a chat channel or a webhook)."""

import json
from pathlib import Path

from datasette import hookimpl


@hookimpl
def track_event(datasette, event):
    if event.name.startswith("broadsheet-"):
        with open(Path(__file__).with_name("events.jsonl"), "a") as fp:
            fp.write(json.dumps({"name": event.name, "actor": event.actor, **event.properties()}, default=str) + "\n")
