"""Cluster commands (`bin/cluster up|join|status|down`): start a Ray head with token auth, join
workers to it, report the nodes, and stop exactly what these commands started on this host."""
