"""Tokens: the per-route manager, its schedule, the flows that fetch, the stores that share."""
