"""Live reload: on SIGHUP, and when the config file or any ``${file:}`` secret changes.

Kubernetes updates a mounted ConfigMap or Secret by writing a new timestamped
directory and swapping the ``..data`` symlink to it; the file names the config
refers to are symlinks through ``..data`` and never change themselves, and
inotify on them sees nothing. So the watcher polls (once a second by default):
for each watched path it compares the fully resolved path and a hash of the
content, which catches a symlink swap, an in-place write and a rename alike,
at the cost of reading a few small files per second.

A config that fails validation is refused: the running one keeps serving, one
log line lists the problems (key paths and lines, never values), and
``authproxy_config_reloads_total{outcome="error"}`` counts it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from collections.abc import Callable

from proxy import config as configmod
from proxy.ops.view import Reloadable

log = logging.getLogger("authproxy.reload")

_FILE_REF = re.compile(r"\$\{file:([^}]+)\}")

Snapshot = dict[str, tuple[str, str] | None]


def _fingerprint(path: str) -> tuple[str, str] | None:
    """(resolved path, content hash), or None when the file cannot be read."""
    try:
        real = os.path.realpath(path)
        with open(real, "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return None
    return real, digest


def watched_paths(config_path: str, config: configmod.Config | None) -> list[str]:
    """The config file, every file the running config read, and every ``${file:}``
    the file on disk names now (so that a secret a refused config was missing is
    watched too, and the reload is retried when it appears)."""
    paths = [os.path.abspath(config_path)]
    if config is not None:
        paths.extend(config.sources)
    try:
        with open(config_path, encoding="utf-8", errors="replace") as fh:
            paths.extend(m.group(1).strip() for m in _FILE_REF.finditer(fh.read()))
    except OSError:
        pass
    return list(dict.fromkeys(paths))


class Reloader:
    """Reloads ``proxy`` from ``config_path`` on :meth:`trigger` and on file changes."""

    def __init__(
        self,
        proxy: Reloadable,
        config_path: str,
        *,
        interval: float = 1.0,
        adjust: Callable[[configmod.Config], configmod.Config] | None = None,
    ) -> None:
        self.proxy = proxy
        self.config_path = config_path
        self.interval = interval
        #: applied to every config loaded (the worker settings of ``serve --workers``)
        self.adjust = adjust
        self._seen: Snapshot = {}
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[bool]] = set()
        self._lock = asyncio.Lock()

    # -- lifetime ----------------------------------------------------------------------

    def start(self) -> None:
        """Start watching (the first snapshot is taken now, synchronously)."""
        self._seen = self._snapshot()
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="config-watch")

    def stop(self) -> None:
        for task in (self._task, *self._pending):
            if task is not None and not task.done():
                task.cancel()
        self._task = None
        self._pending.clear()

    def trigger(self) -> None:
        """Reload soon (SIGHUP). Safe to call from a signal handler on the loop."""
        log.info("reload requested (SIGHUP)")
        # Keep the reference: an unreferenced task can be collected mid-run.
        task = asyncio.get_running_loop().create_task(self.reload())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    # -- the work --------------------------------------------------------------------------

    def _snapshot(self) -> Snapshot:
        paths = watched_paths(self.config_path, self.proxy.config)
        return {p: _fingerprint(p) for p in paths}

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                now = await asyncio.to_thread(self._snapshot)
                if now != self._seen:
                    changed = sorted(p for p in now.keys() | self._seen.keys()
                                     if now.get(p) != self._seen.get(p))  # fmt: skip
                    log.info("config source changed; reloading", extra={"files": changed})
                    await self.reload()
            except asyncio.CancelledError:
                raise
            except Exception:  # the watcher must outlive any one bad reload
                log.exception("config watch failed")

    async def reload(self) -> bool:
        """Load, validate and apply the config file now. True when it was applied."""
        async with self._lock:
            # Snapshot before reading: a change made while loading is seen next poll.
            before = await asyncio.to_thread(self._snapshot)
            ok = await self._apply()
            if ok:  # the new config may read other files: watch those from now on
                after = await asyncio.to_thread(self._snapshot)
                before = {p: before[p] if p in before else after[p] for p in after}
            self._seen = before
            return ok

    async def _apply(self) -> bool:
        counter = self.proxy.metrics.config_reloads
        try:
            new = await asyncio.to_thread(configmod.load, self.config_path)
            if self.adjust is not None:
                new = self.adjust(new)
        except configmod.ConfigError as exc:
            counter.labels("error").inc()
            log.error(
                "config reload refused, still serving the previous config: %s",
                "; ".join(p.format(exc.source) for p in exc.problems),
                extra={"problems": len(exc.problems)},
            )
            return False
        try:
            outcome = await self.proxy.reload(new)
        except Exception as exc:
            counter.labels("error").inc()
            log.error(
                "config reload failed (%s), still serving the previous config",
                type(exc).__name__,
                extra={"exception": type(exc).__name__},
            )
            return False
        counter.labels("success").inc()
        log.info("config reloaded", extra=outcome)
        return True


__all__ = ["Reloader", "watched_paths"]
