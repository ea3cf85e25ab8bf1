"""Redis Cluster: the same scripts and keys on a real 3-primary cluster."""
