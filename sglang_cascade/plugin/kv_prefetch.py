"""GPU-to-GPU KV prefetch: copy one request's KV pages from one paged KV pool into another.

Pools use FlashInfer's paged-KV layout, one tensor per layer:
``[num_pages, 2, page_size, num_kv_heads, head_dim]`` (``NHD``) or
``[num_pages, 2, num_kv_heads, page_size, head_dim]`` (``HND``); ``[:, 0]`` is K, ``[:, 1]`` is V.
A request's KV is the token sequence stored in its page list (``src_pages``), ``seq_len`` tokens long,
the last page partly filled.

Two copy paths:

* ``"pages"`` (same page size and layout on both sides): whole pages are gathered on the source GPU,
  copied peer-to-peer with one ``Tensor.to`` per layer, and scattered into ``dst_pages``.
* ``"flashinfer"`` (any page size / layout on the destination): the request's tokens are gathered into
  ragged ``[seq_len, num_kv_heads, head_dim]`` K and V, copied to the destination GPU, and written with
  ``flashinfer.page.append_paged_kv_cache`` at positions from ``flashinfer.page.get_batch_indices_positions``
  (FlashInfer's own paged-KV append, so the destination pool is written exactly as its kernels expect).

The page-index bookkeeping (:func:`token_slots`, :func:`append_metadata`, :func:`pages_needed`) is plain
Python/torch and runs on CPU; :func:`append_paged_reference` is a torch re-statement of FlashInfer's
append used to test the bookkeeping without a GPU. Bandwidth is reported as KV bytes moved / seconds
(CUDA-synchronised wall clock).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

LAYOUTS = ("NHD", "HND")


@dataclass(frozen=True)
class PagedKVLayout:
    page_size: int
    num_kv_heads: int
    head_dim: int
    layout: str = "NHD"

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.page_size <= 0 or self.num_kv_heads <= 0 or self.head_dim <= 0:
            raise ValueError(f"page_size, num_kv_heads and head_dim must be positive: {self}")

    def cache_shape(self, num_pages: int) -> tuple[int, ...]:
        if self.layout == "NHD":
            return (num_pages, 2, self.page_size, self.num_kv_heads, self.head_dim)
        return (num_pages, 2, self.num_kv_heads, self.page_size, self.head_dim)

    def check(self, cache: torch.Tensor) -> None:
        exp = self.cache_shape(cache.shape[0])
        if tuple(cache.shape) != exp:
            raise ValueError(f"KV cache shape {tuple(cache.shape)} does not match {self} (expected {exp})")


def pages_needed(seq_len: int, page_size: int) -> int:
    return (seq_len + page_size - 1) // page_size


def _check_pages(pages: Sequence[int], seq_len: int, page_size: int, num_pages: int, what: str) -> None:
    need = pages_needed(seq_len, page_size)
    if len(pages) < need:
        raise ValueError(f"{what}: {seq_len} tokens need {need} pages of {page_size}, got {len(pages)}")
    bad = [p for p in pages[:need] if not 0 <= p < num_pages]
    if bad:
        raise ValueError(f"{what}: page indices out of range [0, {num_pages}): {bad[:5]}")
    if len(set(pages[:need])) != need:
        raise ValueError(f"{what}: duplicate page indices")


def token_slots(pages: Sequence[int], seq_len: int, page_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(page index, offset in page) of each of the request's ``seq_len`` tokens, as int64 tensors."""
    t = torch.arange(seq_len, dtype=torch.int64)
    page_tab = torch.as_tensor(list(pages), dtype=torch.int64)
    return page_tab[t // page_size], t % page_size


def append_metadata(dst_pages: Sequence[int], seq_len: int, page_size: int, device="cpu") -> dict[str, torch.Tensor]:
    """The CSR metadata ``append_paged_kv_cache`` takes for one request appended from position 0."""
    n = pages_needed(seq_len, page_size)
    last = seq_len - (n - 1) * page_size if n else 0
    i32 = dict(dtype=torch.int32, device=device)
    return {
        "kv_indices": torch.as_tensor(list(dst_pages[:n]), **i32),
        "kv_indptr": torch.tensor([0, n], **i32),
        "kv_last_page_len": torch.tensor([last], **i32),
        "append_indptr": torch.tensor([0, seq_len], **i32),
        "seq_lens": torch.tensor([seq_len], **i32),
    }


def gather_tokens(
    cache: torch.Tensor, layout: PagedKVLayout, pages: Sequence[int], seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged K and V ``[seq_len, num_kv_heads, head_dim]`` of one request from one layer's cache."""
    page_idx, off = token_slots(pages, seq_len, layout.page_size)
    page_idx, off = page_idx.to(cache.device), off.to(cache.device)
    if layout.layout == "NHD":
        k, v = cache[page_idx, 0, off], cache[page_idx, 1, off]
    else:
        k, v = cache[page_idx, 0, :, off], cache[page_idx, 1, :, off]
    return k, v


def append_paged_reference(
    k: torch.Tensor, v: torch.Tensor, cache: torch.Tensor, layout: PagedKVLayout, pages: Sequence[int]
) -> None:
    """Torch statement of ``flashinfer.page.append_paged_kv_cache`` for one request from position 0."""
    page_idx, off = token_slots(pages, k.shape[0], layout.page_size)
    page_idx, off = page_idx.to(cache.device), off.to(cache.device)
    if layout.layout == "NHD":
        cache[page_idx, 0, off] = k
        cache[page_idx, 1, off] = v
    else:
        cache[page_idx, 0, :, off] = k
        cache[page_idx, 1, :, off] = v


def _append_flashinfer(k, v, cache, layout: PagedKVLayout, pages) -> None:
    import flashinfer.page as fp

    meta = append_metadata(pages, k.shape[0], layout.page_size, device=cache.device)
    batch_indices, positions = fp.get_batch_indices_positions(meta["append_indptr"], meta["seq_lens"], k.shape[0])
    fp.append_paged_kv_cache(
        k,
        v,
        batch_indices,
        positions,
        cache,
        meta["kv_indices"],
        meta["kv_indptr"],
        meta["kv_last_page_len"],
        kv_layout=layout.layout,
    )


@dataclass
class PrefetchResult:
    tokens: int
    bytes: int
    seconds: float
    method: str

    @property
    def gbps(self) -> float:
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else float("inf")


def _sync(*devices) -> None:
    for d in devices:
        if isinstance(d, torch.device) and d.type == "cuda":
            torch.cuda.synchronize(d)


def copy_request_kv(
    src_caches: Sequence[torch.Tensor],
    src_layout: PagedKVLayout,
    src_pages: Sequence[int],
    dst_caches: Sequence[torch.Tensor],
    dst_layout: PagedKVLayout,
    dst_pages: Sequence[int],
    seq_len: int,
    method: str = "auto",
) -> PrefetchResult:
    """Copy one request's KV (all layers) from ``src_pages`` of the source pools into ``dst_pages`` of the
    destination pools. ``method``: ``"pages"``, ``"flashinfer"``, ``"reference"`` (torch append, any
    device) or ``"auto"`` (pages when layouts match, else flashinfer on CUDA, else reference)."""
    if len(src_caches) != len(dst_caches) or not src_caches:
        raise ValueError(f"need the same non-zero number of layers, got {len(src_caches)} and {len(dst_caches)}")
    if seq_len <= 0:
        raise ValueError("seq_len must be positive")
    for c in src_caches:
        src_layout.check(c)
    for c in dst_caches:
        dst_layout.check(c)
    if (src_layout.num_kv_heads, src_layout.head_dim) != (dst_layout.num_kv_heads, dst_layout.head_dim):
        raise ValueError("source and destination must have the same num_kv_heads and head_dim")
    _check_pages(src_pages, seq_len, src_layout.page_size, src_caches[0].shape[0], "source")
    _check_pages(dst_pages, seq_len, dst_layout.page_size, dst_caches[0].shape[0], "destination")
    dst_dev = dst_caches[0].device
    if method == "auto":
        if src_layout == dst_layout:
            method = "pages"
        else:
            method = "flashinfer" if dst_dev.type == "cuda" else "reference"
    if method not in ("pages", "flashinfer", "reference"):
        raise ValueError(f"unknown method {method!r}")
    if method == "pages" and src_layout != dst_layout:
        raise ValueError("method 'pages' needs identical page size and layout on both sides")

    _sync(src_caches[0].device, dst_dev)
    t0 = time.perf_counter()
    moved = 0
    if method == "pages":
        n = pages_needed(seq_len, src_layout.page_size)
        si = torch.as_tensor(list(src_pages[:n]), dtype=torch.int64, device=src_caches[0].device)
        di = torch.as_tensor(list(dst_pages[:n]), dtype=torch.int64, device=dst_dev)
        for s, d in zip(src_caches, dst_caches):
            block = s.index_select(0, si).to(dst_dev, non_blocking=True)
            d.index_copy_(0, di, block)
            moved += block.numel() * block.element_size()
    else:
        for s, d in zip(src_caches, dst_caches):
            k, v = gather_tokens(s, src_layout, src_pages, seq_len)
            k, v = k.to(dst_dev, non_blocking=True), v.to(dst_dev, non_blocking=True)
            if method == "flashinfer":
                _append_flashinfer(k.contiguous(), v.contiguous(), d, dst_layout, dst_pages)
            else:
                append_paged_reference(k, v, d, dst_layout, dst_pages)
            moved += 2 * k.numel() * k.element_size()
    _sync(src_caches[0].device, dst_dev)
    return PrefetchResult(tokens=seq_len, bytes=moved, seconds=time.perf_counter() - t0, method=method)
