"""Checks shared by the KV-migration end-to-end tests: the router's migration counter and idle KV pools."""

from __future__ import annotations

import asyncio
import re


async def migrations_metric(http, url: str, mode: str, fallback: str, reason: str = "stage") -> float:
    """``sglang_cascade_router_migrations_total{fallback, mode, reason}`` on the router at ``url`` (0 if absent)."""
    async with http.get(url + "/metrics") as r:
        text = await r.text()
    pat = rf'sglang_cascade_router_migrations_total\{{fallback="{fallback}",mode="{mode}",reason="{reason}"\}} (\S+)'
    m = re.search(pat, text)
    return float(m.group(1)) if m else 0.0


async def assert_pools_idle(router, workers=None) -> None:
    """Every (given) worker's KV pool is idle: nothing running, waiting or locked, every slot free or
    evictable cache, no imported prefix still pinned and none left to its time to live (read through the
    workers' plugin KV endpoints)."""
    import aiohttp

    from ..router.kv_transport import ZmqRelayTransport

    tr = ZmqRelayTransport(timeout_s=5)
    async with aiohttp.ClientSession() as http:
        for w in workers if workers is not None else router.pool.workers:
            addr = await router.migrator.endpoint(http, w)
            for _ in range(50):  # the source's abort lands asynchronously
                st = await tr.stats(addr)
                if st["running"] == 0 and st["waiting"] == 0 and st["protected"] == 0 and not st.get("pins"):
                    break
                await asyncio.sleep(0.1)
            assert st["running"] == st["waiting"] == st["protected"] == 0, (w.url, st)
            assert not st.get("pins") and not st.get("pins_expired"), (w.url, st)  # the router released each pin
            assert st["available"] + st["evictable"] == st["total"], (w.url, st)
