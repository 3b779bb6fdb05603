"""broadsheet: publish tables of a private SQLite database to LiteFS read nodes.

Code shared by both roles lives in this package; ``primary/`` runs only on the
primary node and ``replica/`` only on read nodes.
"""

__version__ = "0.1.0"
