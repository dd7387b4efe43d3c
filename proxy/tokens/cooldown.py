"""The cooldown that stops a refused fresh token from being replaced again and again.

Pure arithmetic on the injected clock's time, plus one cachetools map (the
per-entry lifetimes, for the jitter, are what ``TLRUCache`` adds to ``TTLCache``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

from cachetools import TLRUCache

log = logging.getLogger("authproxy.tokens")

#: the default ``refused_cooldown``
REFUSED_COOLDOWN = 5.0
#: replicas spread their cooldowns over [cooldown, cooldown * (1 + this)]
COOLDOWN_JITTER = 0.2


class RefusalCooldown:
    """Remembers, for ``cooldown`` seconds, that a refused token was replaced.

    While it remembers, a token refused again is not replaced: the upstream
    refuses fresh tokens (wrong audience, a scope the server does not grant,
    broken introspection), and replacing them would only hammer the provider.
    Concurrent and sequential 401s alike then cause at most one token request
    per cooldown. Each window is stretched by a random ``COOLDOWN_JITTER`` share,
    so that replicas sharing a provider spread their refetches.

    Works whatever the token store: it lives in the manager, one per route.
    """

    def __init__(
        self,
        cooldown: float,
        timer: Callable[[], float],
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.cooldown = cooldown
        self._rand = rand
        #: this episode of refused fresh tokens was logged (once, not per request)
        self._logged = False
        #: the same, for 401s held while the store is down (:meth:`held_alone`)
        self._alone_logged = False
        #: a 401 was held in the current fetch window
        self._held = False
        # Per-entry lifetimes (the jitter) are what TLRUCache adds to TTLCache.
        self._recent: TLRUCache[str, float] = TLRUCache(
            maxsize=4, ttu=lambda _key, length, now: now + length, timer=timer
        )

    def active(self) -> bool:
        """A refused token was replaced less than a (jittered) cooldown ago."""
        return "replaced" in self._recent

    def refused_again(self, route: str) -> bool:
        """The replacement token was refused too: True while the window is open
        (the token is then kept). The warning is logged once per episode."""
        if not self.active():
            return False
        if not self._logged:
            self._logged = True
            log.warning(
                "the upstream refuses fresh tokens (401 again within refused_cooldown "
                "%gs); not fetching another until it ends: check audience, scope and "
                "the upstream's token validation",
                self.cooldown,
                extra={"route": route, "event": "refused_fresh"},
            )
        return True

    def fetched(self) -> None:
        """A token was just fetched from the provider: open its hold window.

        Consulted only while the store cannot coordinate (:meth:`held_alone`).
        """
        if self._held:
            self._held = False
        else:
            # the last token went through its window unrefused: a new episode
            self._alone_logged = False
        if self.cooldown > 0:
            self._recent["fetched"] = self.cooldown * (1.0 + COOLDOWN_JITTER * self._rand())

    def held_alone(self, route: str, *, alone: bool) -> bool:
        """The store is down and the current token was fetched less than a
        (jittered) cooldown ago: True, it is kept through a 401, seen working or
        not. Against a single-session provider every replica's login revokes the
        others' tokens; replacing on each 401 is the storm of issue 16. So each
        replica fetches at most once per window, and the 401 goes to the client."""
        if not alone or "fetched" not in self._recent:
            return False
        self._held = True
        if not self._alone_logged:
            self._alone_logged = True
            log.warning(
                "token refused upstream while the token store is down; keeping it for "
                "refused_cooldown %gs (another replica's login may have revoked it)",
                self.cooldown,
                extra={"route": route, "event": "refused_fresh"},
            )
        return True

    def start(self, *, new_episode: bool) -> None:
        """A refused token is being replaced now: open a window. ``new_episode``:
        the refused token had worked (it was no suspect replacement)."""
        if new_episode:
            self._logged = False
        if self.cooldown > 0:
            self._recent["replaced"] = self.cooldown * (1.0 + COOLDOWN_JITTER * self._rand())
