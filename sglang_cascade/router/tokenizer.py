"""Prompt-token counting for placement.

Exact prompt ids for migration always come from the worker (``return_prompt_token_ids``) or the client's
``input_ids``; this module only sizes a request before it is placed:
- ``tokenizer``: the model's tokenizer (transformers ``AutoTokenizer`` from --tokenizer-path/--model-path);
- ``worker``: the first usable worker's ``/tokenize`` endpoint (one extra round trip);
- ``estimate``: ``len(text) / chars_per_token``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import aiohttp

log = logging.getLogger("sglang_cascade.router")


@dataclass
class TokenCounterConfig:
    mode: str = "auto"  # auto | tokenizer | worker | estimate
    path: str | None = None
    chars_per_token: float = 4.0  # estimate mode: English text averages ~4 characters per token
    timeout_s: float = 5.0  # worker mode: deadline of the /tokenize call (then the estimate is used)


class TokenCounter:
    def __init__(self, cfg: TokenCounterConfig):
        self.cfg = cfg
        self.tokenizer = None
        mode = cfg.mode
        if mode == "auto":
            mode = "tokenizer" if cfg.path else "estimate"
        self.mode = mode
        if mode == "tokenizer":
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(cfg.path, trust_remote_code=True)
            log.info("counting prompt tokens with the tokenizer at %s", cfg.path)

    def estimate(self, text: str) -> int:
        return max(1, int(len(text) / self.cfg.chars_per_token))

    async def count(self, text: str, session=None, worker_url: str | None = None) -> tuple[int, list[int] | None]:
        """(token count, token ids when the method yields the worker-exact ids, else None)."""
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text)), None
        if self.mode == "worker" and session is not None and worker_url:
            try:
                async with session.post(
                    worker_url + "/tokenize",
                    json={"prompt": text},
                    timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
                ) as r:
                    if r.status == 200:
                        d = await r.json()
                        ids = d.get("tokens")
                        if isinstance(ids, list):
                            return len(ids), ids
            except Exception as e:  # fall back to the estimate; placement only
                log.debug("tokenize on %s failed: %s", worker_url, e)
        return self.estimate(text), None
