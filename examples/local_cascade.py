"""One-command local cascade: three SGLang workers on the CPU engine, our router with --policy cascade in
front, and a short client run that shows requests entering stages and migrating between them.

    python examples/local_cascade.py            # real SGLang servers on CPU (tiny model; a few minutes to start)
    python examples/local_cascade.py --fake     # fake workers instead (seconds; no sglang needed)

Stages here are fixed for the demo (``cascade:bounds=24/40,counts=1/1/1``: lengths < 24 on worker 0,
24..39 on worker 1, >= 40 on worker 2); drop ``bounds``/``counts`` to let the policy plan them itself.
The router is the same command an operator runs:

    python -m sglang_cascade.router --host 127.0.0.1 --port 30000 --worker-urls URL1 URL2 URL3 \
        --policy cascade:bounds=24/40,counts=1/1/1
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(url: str, timeout: float) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            with urllib.request.urlopen(url + "/health", timeout=3) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up in {timeout:.0f}s")


def stream(url: str, body: dict):
    req = urllib.request.Request(
        url + "/generate",
        data=json.dumps({**body, "stream": True}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=300) as r:
        for line in r:
            line = line.strip()
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                yield json.loads(line[6:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fake", action="store_true", help="fake workers instead of CPU-engine SGLang servers")
    ap.add_argument("--port", type=int, default=0, help="router port (default: a free one)")
    a = ap.parse_args()
    procs: list[subprocess.Popen] = []
    py = sys.executable
    try:
        urls = []
        for _ in range(3):
            p = free_port()
            if a.fake:
                cmd = [py, "-m", "sglang_cascade.testing.fake_worker", "--port", str(p), "--time-scale", "1"]
            else:
                cmd = [py, "-m", "sglang_cascade.testing.cpu_server", "--host", "127.0.0.1", "--port", str(p)]
            procs.append(
                subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            )
            urls.append(f"http://127.0.0.1:{p}")
        rport = a.port or free_port()
        router = f"http://127.0.0.1:{rport}"
        procs.append(
            subprocess.Popen(
                [
                    py,
                    "-m",
                    "sglang_cascade.router",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(rport),
                    "--worker-urls",
                    *urls,
                    "--policy",
                    "cascade:bounds=24/40,counts=1/1/1",
                    "--log-level",
                    "warn",
                ],
                start_new_session=True,
            )
        )
        print(
            f"workers: {urls}\nrouter:  {router}  (stage 0: len < 24 -> {urls[0]}, stage 1: 24..39 -> {urls[1]}, "
            f"stage 2: >= 40 -> {urls[2]})"
        )
        for u in urls + [router]:
            wait(u, 600)
        t0 = time.time()  # the router admits a worker once its own health check sees it up
        while not all(w["usable"] for w in json.loads(urllib.request.urlopen(router + "/workers").read())["workers"]):
            if time.time() - t0 > 60:
                raise RuntimeError("router did not admit the workers")
            time.sleep(0.3)
        names = {u: f"stage {i}" for i, u in enumerate(urls)}
        sp = {"max_new_tokens": 40, "temperature": 0.0, "ignore_eos": True}
        for label, body in (
            ("short prompt (8 tokens)", {"input_ids": list(range(10, 18))}),
            ("medium prompt (30 tokens)", {"input_ids": list(range(10, 40))}),
        ):
            print(f"\n{label}, 40 new tokens:")
            last, seen = None, 0
            for ch in stream(router, {**body, "sampling_params": sp}):
                path = ch["meta_info"].get("cascade", {}).get("path")
                if path and len(path) - 1 > seen and last is not None:
                    seen = len(path) - 1
                    m = last["meta_info"]  # the last chunk the source streamed
                    print(
                        f"  after {m['completion_tokens']:>2} tokens (length {m['prompt_tokens'] + m['completion_tokens']}):"
                        f" migrated {names.get(path[-2])} -> {names.get(path[-1])}"
                    )
                last = ch
            path = last["meta_info"].get("cascade", {}).get("path") or ["(one worker)"]
            print(
                f"  entered {names.get(path[0], path[0])}; finished with {last['meta_info']['completion_tokens']} "
                f"tokens after {len(path) - 1} migrations; output_ids[:8] = {last['output_ids'][:8]}"
            )
            ref = json.loads(
                urllib.request.urlopen(
                    urllib.request.Request(
                        urls[0] + "/generate",
                        data=json.dumps({**body, "sampling_params": sp}).encode(),
                        headers={"Content-Type": "application/json"},
                    ),
                    timeout=300,
                ).read()
            )
            print(f"  same tokens as an uninterrupted run on one worker: {ref['output_ids'] == last['output_ids']}")
        with urllib.request.urlopen(router + "/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("sglang_cascade_router_migrations_total"):
                    print("\nrouter metric:", line)
        return 0
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


if __name__ == "__main__":
    raise SystemExit(main())
