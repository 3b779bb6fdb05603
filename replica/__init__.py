"""Code that runs only on read nodes: the Datasette plugin that serves
published tables and nothing else."""
