"""In-process fake-worker clusters and routers on loopback ports (tests, examples, benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from ..testing.fake_worker import FakeWorker, FakeWorkerConfig
from ..testing.server_fixture import free_port
from .args import RouterArgs
from .server import Router


@dataclass
class Served:
    runner: web.AppRunner
    url: str
    port: int

    async def stop(self) -> None:
        await self.runner.cleanup()


async def serve_app(app: web.Application, port: int | None = None, host: str = "127.0.0.1") -> Served:
    port = port or free_port()
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=4096).start()
    return Served(runner, f"http://{host}:{port}", port)


@dataclass
class LocalCluster:
    workers: list[FakeWorker] = field(default_factory=list)
    served: list[Served] = field(default_factory=list)

    @classmethod
    async def start(cls, n: int, cfg: FakeWorkerConfig | None = None) -> LocalCluster:
        c = cls()
        for _ in range(n):
            await c.add(cfg)
        return c

    async def add(self, cfg: FakeWorkerConfig | None = None) -> str:
        w = FakeWorker(cfg or FakeWorkerConfig(time_scale=0.0))
        s = await serve_app(w.app)
        self.workers.append(w)
        self.served.append(s)
        return s.url

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.served]

    async def kill(self, i: int) -> None:
        """Crash worker ``i``: its engine stops producing tokens at once, then its server goes away
        (open streams are cut without a finish)."""
        await self.workers[i].engine.stop()
        await self.served[i].stop()

    async def stop(self) -> None:
        for s in self.served:
            try:
                await s.stop()
            except Exception:
                pass


async def start_router(args: RouterArgs, policy_factory=None) -> tuple[Router, Served]:
    router = Router(args, policy_factory)
    served = await serve_app(router.app, args.port or None, args.host)
    router.listen_port = served.port
    return router, served
