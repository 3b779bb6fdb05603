"""broadsheet: publish tables of a private SQLite database to LiteFS read nodes.

The library both roles share lives in this package, and it imports no role:
``primary/`` runs only on the primary node, ``replica/`` only on read nodes,
and ``local/`` (the local cluster) is a user of both. Each of them declares
its commands as an entry point that ``broadsheet/cli.py`` composes.
"""

__version__ = "0.1.0"
