"""Token stores: memory, file and Redis (standalone, Sentinel, Cluster)."""
