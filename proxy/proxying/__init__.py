"""The data path: routing, the route, header rewriting, forwarding with one replay."""
