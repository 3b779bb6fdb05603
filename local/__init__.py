"""The local cluster: a whole broadsheet (a private primary, read nodes, a
standby) on one machine, built from the roles' own entry points
(``PrimaryNode.from_env``, ``ReadNode.from_env``) under one supervisor.
``broadsheet up`` and the test suite run it."""
