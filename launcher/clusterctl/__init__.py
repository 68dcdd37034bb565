"""Cluster commands (`bin/cluster up|join|status|wait|down`): start a Ray head with token auth, join
workers to it (detached, or in the foreground for a Slurm step), report the nodes, wait for them,
and stop exactly what these commands started on this host."""
