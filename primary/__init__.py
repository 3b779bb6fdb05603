"""Code that runs only on the primary node: publish state, the publisher, the
team's Datasette plugin and the control plane."""
