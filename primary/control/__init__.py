"""The control plane: publish state, propagation and health over HTTP.

Runs beside the team's Datasette on the primary
(``uvicorn primary.control.app:app``). Every route but ``/health`` needs a
team actor: a Datasette API token (``Authorization: Bearer dstok_…``) or
the browser's ``ds_actor`` cookie.

- ``app``: the FastAPI application, its middleware and lifespan.
- ``models``: the API's request and response models (the OpenAPI document).
- ``errors``: one exception handler per error kind, the JSON bodies clients see.
- ``deps``: what routes depend on: the team actor, the tracker, data.db.
- ``auth``: team actors from tokens and login cookies; signing tokens.
- ``permissions``: who may publish, answered by the team's own plugin.
- ``flips``: making a table public or private, and waiting for the publisher.
- ``tracker``, ``discovery``: where every read node is, and when each publish reached it.
- ``routes/``: one router per resource.
"""

import os

# No third-party Datasette plugins in a process that uses the control plane
# (nor in the CLI, which signs tokens here): Datasette loads them when first
# imported, and the permission checker must answer as the team's Datasette,
# which loads only the team's own plugins.
os.environ.setdefault("DATASETTE_LOAD_PLUGINS", "")
