"""The node side: one long-lived NodeHost actor per node and run (host.py), holding the rank
groups of every job placed on that node (group.py); HostPool (pool.py) keeps one per node."""
