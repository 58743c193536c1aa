"""Start and stop CPU-engine SGLang servers from tests and scripts.

- :func:`free_port` picks a free TCP port.
- :class:`ServerProcess` runs ``python -m sglang_cascade.testing.cpu_server --host H --port P *args``
  in its own process group, waits for ``GET /health`` == 200 (SGLang answers 503 until its warm-up
  request is done), and stops it by PID (SIGTERM to the group, wait, then SIGKILL).
- :func:`server_fixture` makes a pytest fixture that starts N servers once per scope (default:
  session), waits for all, and stops them at the end. Use it in a test module::

      from sglang_cascade.testing.server_fixture import server_fixture
      cpu_server = server_fixture()                                  # one server
      plugin_server = server_fixture(["--scheduler-plugin", "cascade"])
      cluster = server_fixture(n=3)                                  # list of 3 servers

      def test_x(cpu_server):
          out = cpu_server.generate({"text": "hi", "sampling_params": {"max_new_tokens": 4}})

  The fixture skips the test when sglang (or the model-writing libraries) is not installed.
  Fixtures with the same ``(args, n, env)`` share servers across modules (``shared=False`` to opt out).
- :func:`post_json` / :func:`get` are stdlib HTTP helpers (no extra dependency).

Nothing here imports sglang or pytest at module import time.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_STARTUP_TIMEOUT = float(os.environ.get("SGLANG_CASCADE_SERVER_TIMEOUT", "300"))


_HANDED_OUT: set[int] = set()  # ports this process already gave to a server that may not have bound them yet


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (the OS picks it) and that this process has not handed out before:
    servers constructed together and started before any of them binds must not get the same port."""
    for _ in range(64):
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free port that this process has not handed out already")


def port_is_free(host: str, port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def missing_requirements() -> list[str]:
    """Modules the CPU engine needs that are not installed (empty when all are there)."""
    need = ("sglang", "torch", "transformers", "tokenizers", "safetensors")
    return [m for m in need if importlib.util.find_spec(m) is None]


@dataclass
class HttpResult:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _request(method: str, url: str, data: bytes | None, headers: dict[str, str], timeout: float) -> HttpResult:
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return HttpResult(resp.status, resp.read())
    except urllib.error.HTTPError as e:
        return HttpResult(e.code, e.read())


def post_json(url: str, payload: Any, timeout: float = 120.0) -> HttpResult:
    """POST ``payload`` as JSON; returns status and body (4xx/5xx do not raise)."""
    data = json.dumps(payload).encode()
    return _request("POST", url, data, {"Content-Type": "application/json"}, timeout)


def post_raw(url: str, body: bytes, content_type: str = "application/json", timeout: float = 60.0) -> HttpResult:
    return _request("POST", url, body, {"Content-Type": content_type}, timeout)


def get(url: str, timeout: float = 10.0) -> HttpResult:
    return _request("GET", url, None, {}, timeout)


def stream_json(url: str, payload: Any, timeout: float = 120.0) -> list[Any]:
    """POST with ``stream: true`` and return the decoded ``data:`` events (without ``[DONE]``)."""
    body = dict(payload, stream=True)
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    events = []
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                break
            events.append(json.loads(data))
    return events


def stop_process_group(proc: subprocess.Popen, timeout: float = 30.0) -> int | None:
    """Stop a process started with ``start_new_session=True`` and everything in its group: SIGTERM, wait up
    to ``timeout`` s, SIGKILL; then SIGKILL the group again (children such as SGLang's scheduler or a
    router's plan-check process may outlive the parent). Returns the exit code."""

    def signal_group(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    if proc.poll() is None:
        signal_group(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            signal_group(signal.SIGKILL)
            proc.wait(timeout=10)
    signal_group(signal.SIGKILL)
    return proc.returncode


def pin_process_group(pgid: int, cpus: set[int]) -> int:
    """Pin every thread of every process in process group ``pgid`` to ``cpus`` (``sched_setaffinity``);
    returns the threads pinned. A server's own threads and its scheduler / detokenizer children all move."""
    n = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getpgid(int(pid)) != pgid:
                continue
            for tid in os.listdir(f"/proc/{pid}/task"):
                os.sched_setaffinity(int(tid), cpus)
                n += 1
        except (ProcessLookupError, PermissionError, FileNotFoundError, OSError):
            continue
    return n


@dataclass
class ServerProcess:
    """One CPU-engine SGLang server (``args`` are extra sglang.launch_server arguments)."""

    args: Sequence[str] = ()
    port: int | None = None
    env: dict[str, str] | None = None
    host: str = "127.0.0.1"
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT
    log_path: str | None = None
    proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    started_at: float | None = field(default=None, init=False)
    ready_after_s: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.port is None:
            self.port = free_port(self.host)
        self.args = list(self.args)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "sglang_cascade.testing.cpu_server",
            "--host",
            self.host,
            "--port",
            str(self.port),
            *self.args,
        ]

    def start(self) -> ServerProcess:
        """Spawn the server (returns at once; call :meth:`wait_ready`)."""
        if self.proc is not None:
            raise RuntimeError("server already started")
        if not port_is_free(self.host, self.port):
            raise RuntimeError(f"port {self.port} on {self.host} is already in use")
        if self.log_path is None:
            fd, self.log_path = tempfile.mkstemp(prefix=f"cpu_server_{self.port}_", suffix=".log")
            os.close(fd)
        env = dict(os.environ)
        if self.env:
            env.update(self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # own process group: stop() reaches scheduler + detokenizer
            )
        self.started_at = time.monotonic()
        return self

    def log_tail(self, chars: int = 4000) -> str:
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - chars))
            return f.read().decode(errors="replace")

    def is_healthy(self) -> bool:
        try:
            return get(self.base_url + "/health", timeout=5).status == 200
        except OSError:
            return False

    def _is_ours(self) -> bool:
        """The answering server is an SGLang server on our port (not some other process)."""
        try:
            res = get(self.base_url + "/get_server_info", timeout=5)
            return res.status == 200 and int(res.json().get("port", -1)) == self.port
        except (OSError, ValueError):
            return False

    def wait_ready(self, timeout: float | None = None) -> ServerProcess:
        """Block until ``/health`` answers 200; raise with the log tail if it dies or times out."""
        if self.proc is None:
            raise RuntimeError("server not started")
        deadline = time.monotonic() + (self.startup_timeout if timeout is None else timeout)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"CPU-engine server on port {self.port} exited with {self.proc.returncode}; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if self.is_healthy() and self._is_ours():
                self.ready_after_s = time.monotonic() - (self.started_at or 0.0)
                return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"CPU-engine server on port {self.port} not ready; log {self.log_path}:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the process group, wait up to ``timeout`` s, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        return stop_process_group(self.proc, timeout)

    def __enter__(self) -> ServerProcess:
        return self.start().wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()

    # HTTP conveniences
    def url(self, path: str) -> str:
        return self.base_url + path

    def generate(self, payload: dict, timeout: float = 120.0) -> dict:
        """POST /generate; raises RuntimeError on a non-200 answer."""
        res = post_json(self.url("/generate"), payload, timeout=timeout)
        if res.status != 200:
            raise RuntimeError(f"/generate -> {res.status}: {res.body[:500]!r}")
        return res.json()


def start_servers(
    n: int = 1,
    args: Iterable[str] = (),
    env: dict[str, str] | None = None,
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
) -> list[ServerProcess]:
    """Start ``n`` servers in parallel and wait for all (stopping all if one fails)."""
    servers = [ServerProcess(list(args), env=env, startup_timeout=startup_timeout) for _ in range(n)]
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait_ready()
    except BaseException:
        for s in servers:
            s.stop()
        raise
    return servers


_SHARED: dict[tuple, list[ServerProcess]] = {}


def shared_servers(
    n: int = 1,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
) -> list[ServerProcess]:
    """Servers with this exact ``(n, args, env)`` started once per process and reused (the
    caller never stops them; :func:`stop_shared_servers` or interpreter exit does)."""
    key = (n, tuple(args), tuple(sorted((env or {}).items())))
    servers = _SHARED.get(key)
    if servers is None or not all(s.proc is not None and s.proc.poll() is None for s in servers):
        if servers:
            for s in servers:
                s.stop()
        servers = start_servers(n, args, env=env, startup_timeout=startup_timeout)
        _SHARED[key] = servers
    return servers


def stop_shared_servers() -> None:
    for servers in _SHARED.values():
        for s in servers:
            s.stop()
    _SHARED.clear()


atexit.register(stop_shared_servers)


def server_fixture(
    args: Sequence[str] = (),
    n: int = 1,
    scope: str = "session",
    env: dict[str, str] | None = None,
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
    shared: bool = True,
):
    """A pytest fixture yielding one :class:`ServerProcess` (``n == 1``) or a list of ``n``.

    ``shared=True`` (default): fixtures with the same ``(args, n, env)`` in any test module of the
    session reuse the same servers (started on first use, stopped at session end).
    ``shared=False``: own servers, stopped when the fixture's scope ends.
    """
    import pytest

    @pytest.fixture(scope=scope)
    def _fixture(request):
        missing = missing_requirements()
        if missing:
            pytest.skip(f"CPU engine needs {', '.join(missing)}")
        if shared:
            servers = shared_servers(n, args, env=env, startup_timeout=startup_timeout)
            request.session.config.add_cleanup(stop_shared_servers)
            yield servers[0] if n == 1 else servers
            return
        servers = start_servers(n, args, env=env, startup_timeout=startup_timeout)
        try:
            yield servers[0] if n == 1 else servers
        finally:
            for s in servers:
                s.stop()

    return _fixture
