"""Wire messages of the KV migration endpoint (msgspec headers; the tensors travel as raw frames).

Importable without sglang, torch or zmq. A request is ``[encode(KVRequest), *frames]`` and a reply
``[encode(KVReply), *frames]``; for ``export`` replies and ``import`` requests the frames are, per layer,
K then V of the tokens ``[start, end)`` (C-contiguous bytes of ``[end - start, *k_shape]`` /
``[end - start, *v_shape]`` in ``dtype``).

Ops:
- ``export``: KV of the running request ``rid`` for token positions ``[start, end)`` (``end`` = -1: every
  position whose KV is computed, i.e. ``prompt + output - 1``); the reply carries ``token_ids`` (prompt +
  output so far) and the range actually exported.
- ``import``: write the frames as the KV of ``token_ids[start:end]`` and insert ``token_ids[:end]`` as a
  prefix into the radix cache (positions before ``start`` must already be cached there, from an earlier
  stage); the reply's ``end`` is the cached prefix length after the import.
  With ``pin`` set, the imported prefix stays locked in the destination's radix cache under that name (an
  import under the same name re-locks the longer prefix and drops the earlier lock) until ``release``, or
  until the pin's time to live ends: SGLang's own admission cannot evict it while the continuation waits in
  the destination's queue.
- ``pin``: lock ``token_ids[:end]``, already in the radix cache, under the name ``pin`` (``gap`` when it is not).
- ``release``: drop the pin named ``pin`` (unknown names are fine: the call is idempotent).
- ``stats``: KV pool use (``available``, ``evictable``, ``protected``, ``total`` tokens, ``running``,
  ``pins``).

The KV stage endpoint (``plugin/kv_stage.py``, a thread of the scheduler process) answers two ops:
- ``stage``: capture the KV of request ``rid`` as its prefill ends (the router sends it at dispatch when the
  request will move right after its first token);
- ``export``: as above, from that capture, without waiting for the scheduler; the reply may cover less than
  asked (``[start, captured end)``) and is ``ok=False`` with ``not_staged`` when nothing was captured.
"""

from __future__ import annotations

import msgspec

OPS = ("export", "import", "pin", "release", "stats", "stage")
# key of a worker's KV endpoint address in /get_server_info internal_states (published by the plugin,
# read by the router)
STATE_KEY = "cascade_kv_endpoint"
STAGE_STATE_KEY = "cascade_kv_stage_endpoint"  # the KV stage endpoint's address, beside it


class KVRequest(msgspec.Struct, kw_only=True):
    op: str
    rid: str = ""
    start: int = 0
    end: int = -1
    token_ids: list[int] = []
    dtype: str = ""
    k_shape: list[int] = []
    v_shape: list[int] = []
    layers: int = 0
    pin: str = ""  # import: keep the prefix locked under this name; release: the name to unlock
    max_new_left: int | None = None  # import for a move: its continuation's output left (-1 unknown); the
    # destination keeps room to admit it beside its running requests' reserve, else out_of_kv


class KVReply(msgspec.Struct, kw_only=True):
    ok: bool = True
    error: str = ""  # a short reason when not ok (e.g. "no_request", "out_of_kv", "gap", "layout")
    start: int = 0
    end: int = 0
    token_ids: list[int] = []
    dtype: str = ""
    k_shape: list[int] = []
    v_shape: list[int] = []
    layers: int = 0
    stats: dict[str, int] = {}

    @property
    def tokens(self) -> int:
        return max(0, self.end - self.start)


_enc = msgspec.msgpack.Encoder()
_dec_req = msgspec.msgpack.Decoder(KVRequest)
_dec_rep = msgspec.msgpack.Decoder(KVReply)


def encode(msg: KVRequest | KVReply) -> bytes:
    return _enc.encode(msg)


def decode_request(b: bytes) -> KVRequest:
    return _dec_req.decode(b)


def decode_reply(b: bytes) -> KVReply:
    return _dec_rep.decode(b)
