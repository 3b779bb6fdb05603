"""Team API tokens (``dstok_…``): Datasette's own, signed with the secret
every process of a cluster shares. The primary's team Datasette and its
control plane accept them."""

from __future__ import annotations

import os

from . import sync

_signers: dict = {}


async def create(secret: str, actor: str, expires_after: int | None = None) -> str:
    """A token for ``actor``, valid for ``expires_after`` seconds (None:
    until the secret changes)."""
    # Signed by Datasette's own token handler: no third-party plugin's
    # (which the primary, checking it, does not load either).
    os.environ.setdefault("DATASETTE_LOAD_PLUGINS", "")
    from datasette.app import Datasette

    if secret not in _signers:
        _signers[secret] = Datasette(secret=secret)  # database-less: it only signs
    return await _signers[secret].create_token(actor, expires_after=expires_after)


def mint(secret: str, actor: str, expires_after: int | None = None) -> str:
    """``create``, from synchronous code (the CLI, tests, the benchmark)."""
    return sync.run(create(secret, actor, expires_after))
