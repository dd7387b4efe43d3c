"""A tiny token endpoint for the benchmark's refreshing route.

``POST /login`` with JSON ``{"k": "v"}`` answers ``{"token": "tok-N", "ttl": TTL}``;
``GET /stats`` answers ``{"issued": N}`` so that the bench can show how many
refreshes happened while it was loading the proxy.  Run by ``bench/run.py``
as its own process so that its CPU is not counted as the proxy's.
"""

from __future__ import annotations

import argparse

from aiohttp import web

ISSUED = web.AppKey("issued", list)
TTL = web.AppKey("ttl", int)


async def login(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if body != {"k": "v"}:
        return web.json_response({"error": "bad credentials"}, status=401)
    issued = request.app[ISSUED]
    issued.append(1)
    ttl = request.app[TTL]
    return web.json_response({"token": f"tok-{len(issued)}", "ttl": ttl})


async def stats(request: web.Request) -> web.Response:
    return web.json_response({"issued": len(request.app[ISSUED])})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ttl", type=int, default=3, help="expires_in of each token, seconds")
    args = parser.parse_args()
    app = web.Application()
    app[ISSUED] = []
    app[TTL] = args.ttl
    app.router.add_post("/login", login)
    app.router.add_get("/stats", stats)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
