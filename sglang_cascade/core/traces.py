"""Trace loading: real request traces and length tables, detected by their columns.

Formats (detected from the header / first JSON object's keys; ``fmt`` overrides):
- ``azure``: Azure LLM inference 2023 CSV: TIMESTAMP, ContextTokens, GeneratedTokens.
- ``vidur``: Vidur processed trace CSV: arrived_at (s), num_prefill_tokens, num_decode_tokens.
- ``lengths``: a length table without times (ShareGPT / arXiv stats: num_prefill_tokens,
  num_decode_tokens); sampled with replacement and given Poisson or gamma arrivals at ``rate``.
- ``mooncake``: JSONL with timestamp (ms), input_length, output_length[, hash_ids].
- ``generic``: CSV or JSONL with ``prompt_len``, ``output_len`` and optionally ``arrival`` (seconds).
  Without ``arrival`` it is treated like a length table.

Built-in names (shipped gzip copies of public data, see sglang_cascade/data/SOURCES.md):
``azure_conv``, ``azure_code``, ``sharegpt``, ``arxiv``.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources

import numpy as np

BUILTIN = {
    "azure_conv": "azure_conv.csv.gz",
    "azure_code": "azure_code.csv.gz",
    "sharegpt": "sharegpt.csv.gz",
    "arxiv": "arxiv.csv.gz",
    "mooncake": "mooncake.jsonl.gz",  # long context: prompts up to 191K tokens, with prefix block hashes
}
FORMATS = ("azure", "vidur", "lengths", "mooncake", "generic")


@dataclass(slots=True)
class TraceRequest:
    rid: str
    arrival: float  # seconds from trace start
    prompt_len: int
    output_len: int  # true output length (the simulator stops the request there)
    hash_ids: list[int] = field(default_factory=list)


class TraceError(ValueError):
    pass


def _open_text(path: str) -> str:
    if path in BUILTIN:
        data = resources.files("sglang_cascade.data").joinpath("traces", BUILTIN[path]).read_bytes()
        return gzip.decompress(data).decode()
    if not os.path.exists(path):
        raise TraceError(f"trace {path!r} not found (built-in names: {', '.join(BUILTIN)})")
    with open(path, "rb") as f:
        raw = f.read()
    if path.endswith(".gz"):
        raw = gzip.decompress(raw)
    return raw.decode()


def _parse_azure_ts(s: str) -> float:
    s = s.strip()
    if "." in s:
        head, frac = s.split(".", 1)
        s = f"{head}.{frac[:6]}"
        return datetime.strptime(s, "%Y-%m-%d %H:%M:%S.%f").timestamp()
    return datetime.strptime(s, "%Y-%m-%d %H:%M:%S").timestamp()


def detect_format(text: str) -> str:
    first = text.lstrip().split("\n", 1)[0].strip()
    if first.startswith("{"):
        keys = set(json.loads(first))
        if {"input_length", "output_length"} <= keys:
            return "mooncake"
        if {"prompt_len", "output_len"} <= keys:
            return "generic"
        raise TraceError(f"unrecognized JSONL keys {sorted(keys)}")
    cols = {c.strip() for c in first.split(",")}
    if {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} <= cols:
        return "azure"
    if {"arrived_at", "num_prefill_tokens", "num_decode_tokens"} <= cols:
        return "vidur"
    if {"num_prefill_tokens", "num_decode_tokens"} <= cols:
        return "lengths"
    if {"prompt_len", "output_len"} <= cols:
        return "generic"
    raise TraceError(f"unrecognized trace columns {sorted(cols)}; expected one of the formats {FORMATS}")


def _rows(text: str, fmt: str) -> tuple[list[float] | None, list[int], list[int], list[list[int]]]:
    """Return (arrivals or None, prompt lengths, output lengths, hash ids)."""
    arr: list[float] | None = []
    p: list[int] = []
    o: list[int] = []
    h: list[list[int]] = []
    if fmt in ("mooncake",) or (fmt == "generic" and text.lstrip().startswith("{")):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if fmt == "mooncake":
                    arr.append(float(obj["timestamp"]) / 1000.0)
                    p.append(int(obj["input_length"]))
                    o.append(int(obj["output_length"]))
                    h.append(list(obj.get("hash_ids", [])))
                else:
                    if arr is not None and "arrival" in obj:
                        arr.append(float(obj["arrival"]))
                    else:
                        arr = None
                    p.append(int(obj["prompt_len"]))
                    o.append(int(obj["output_len"]))
                    h.append(list(obj.get("hash_ids", [])))
            except (KeyError, ValueError, TypeError) as e:
                raise TraceError(f"line {n}: {e!r}") from e
        return arr, p, o, h
    reader = csv.DictReader(io.StringIO(text))
    for n, row in enumerate(reader, 2):
        try:
            if fmt == "azure":
                arr.append(_parse_azure_ts(row["TIMESTAMP"]))
                p.append(int(row["ContextTokens"]))
                o.append(int(row["GeneratedTokens"]))
            elif fmt == "vidur":
                arr.append(float(row["arrived_at"]))
                p.append(int(float(row["num_prefill_tokens"])))
                o.append(int(float(row["num_decode_tokens"])))
            elif fmt == "lengths":
                arr = None
                p.append(int(float(row["num_prefill_tokens"])))
                o.append(int(float(row["num_decode_tokens"])))
            else:  # generic csv
                if arr is not None and row.get("arrival") not in (None, ""):
                    arr.append(float(row["arrival"]))
                else:
                    arr = None
                p.append(int(float(row["prompt_len"])))
                o.append(int(float(row["output_len"])))
            h.append([])
        except (KeyError, ValueError, TypeError) as e:
            raise TraceError(f"row {n}: {e!r}") from e
    return arr, p, o, h


def load_trace(
    path: str,
    fmt: str | None = None,
    *,
    num_requests: int | None = None,
    rate: float | None = None,
    rate_scale: float | None = None,
    duration: float | None = None,
    arrival_process: str = "poisson",
    burstiness_cv: float = 1.0,
    seed: int = 0,
    max_output: int | None = None,
    max_context: int | None = None,
) -> list[TraceRequest]:
    """Load a trace as requests sorted by arrival, times starting at 0.

    - Traces with times keep them; ``rate_scale`` multiplies the rate (divides inter-arrival gaps);
      ``rate`` rescales them to that mean rate (requests/s). ``num_requests`` keeps the first K.
    - Length tables (no times) are sampled with replacement (``num_requests``, default the table size)
      with ``arrival_process`` "poisson" or "gamma" (coefficient of variation ``burstiness_cv``) at
      ``rate`` requests/s (default 1.0 x ``rate_scale``).
    - ``duration`` cuts arrivals after that many seconds. Lengths are clamped to >= 1 output token,
      prompts to >= 1; ``max_context`` drops requests whose prompt + output exceed it.
    """
    text = _open_text(path)
    fmt = fmt or detect_format(text)
    if fmt not in FORMATS:
        raise TraceError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    arr, p, o, h = _rows(text, fmt)
    if not p:
        raise TraceError(f"trace {path!r} has no requests")
    rng = np.random.default_rng(seed)
    pa = np.maximum(1, np.asarray(p, dtype=np.int64))
    oa = np.maximum(1, np.asarray(o, dtype=np.int64))
    if arr is None:
        n = num_requests or len(pa)
        idx = rng.integers(0, len(pa), size=n)
        pa, oa = pa[idx], oa[idx]
        h = [h[i] for i in idx]
        r = (rate or 1.0) * (rate_scale or 1.0)
        if arrival_process == "poisson":
            gaps = rng.exponential(1.0 / r, size=n)
        elif arrival_process == "gamma":
            shape = 1.0 / max(1e-6, burstiness_cv) ** 2
            gaps = rng.gamma(shape, 1.0 / (r * shape), size=n)
        else:
            raise TraceError(f"unknown arrival process {arrival_process!r} (poisson, gamma)")
        ta = np.cumsum(gaps) - gaps[0]
    else:
        ta = np.asarray(arr, dtype=np.float64)
        order = np.argsort(ta, kind="stable")
        ta, pa, oa = ta[order], pa[order], oa[order]
        h = [h[i] for i in order]
        ta = ta - ta[0]
        if num_requests:
            ta, pa, oa, h = ta[:num_requests], pa[:num_requests], oa[:num_requests], h[:num_requests]
        if rate and len(ta) > 1 and ta[-1] > 0:
            ta = ta * ((len(ta) - 1) / ta[-1]) / rate
        if rate_scale:
            ta = ta / rate_scale
    if max_output:
        oa = np.minimum(oa, max_output)
    keep = np.ones(len(ta), dtype=bool)
    if duration is not None:
        keep &= ta <= duration
    if max_context:
        keep &= (pa + oa) <= max_context
    out = [TraceRequest(f"r{i}", float(ta[i]), int(pa[i]), int(oa[i]), h[i]) for i in np.flatnonzero(keep)]
    if not out:
        raise TraceError("no request left after filtering")
    return out


LENGTH_SAMPLE_SIZE = 2000  # (prompt, output) pairs a driver gives its policies (PolicyContext.length_sample)


def length_sample(
    reqs: Sequence[TraceRequest], size: int = LENGTH_SAMPLE_SIZE
) -> tuple[list[tuple[int, int]], float | None]:
    """What a driver tells its policies of a trace (``PolicyContext.length_sample`` / ``arrival_rate``): the (prompt,
    output) lengths of every k-th request, at most ``size``, and the arrival rate over the first to the last arrival
    (None for fewer than two requests or no span). The simulator and the router's ``--cascade-length-sample`` both."""
    step = max(1, len(reqs) // max(1, size))
    sample = [(r.prompt_len, r.output_len) for r in reqs[::step]][:size]
    rate = None
    if len(reqs) > 1 and reqs[-1].arrival > reqs[0].arrival:
        rate = (len(reqs) - 1) / (reqs[-1].arrival - reqs[0].arrival)
    return sample, rate


def trace_rate(reqs: list[TraceRequest]) -> float:
    if len(reqs) < 2 or reqs[-1].arrival <= 0:
        return 0.0
    return (len(reqs) - 1) / reqs[-1].arrival
