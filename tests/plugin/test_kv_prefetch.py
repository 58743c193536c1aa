"""KV prefetch: page-index bookkeeping on CPU; the FlashInfer GPU-to-GPU copy on a GPU (marked)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from sglang_cascade.plugin.kv_prefetch import (  # noqa: E402
    PagedKVLayout,
    append_metadata,
    copy_request_kv,
    gather_tokens,
    pages_needed,
    token_slots,
)


def filled_pool(layout: PagedKVLayout, num_pages: int, layers: int, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(layout.cache_shape(num_pages), generator=g).to(device) for _ in range(layers)]


def test_token_slots_and_append_metadata():
    page_idx, off = token_slots([7, 2, 9], seq_len=10, page_size=4)
    assert page_idx.tolist() == [7] * 4 + [2] * 4 + [9] * 2
    assert off.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    m = append_metadata([5, 6, 8, 11], seq_len=10, page_size=4)
    assert m["kv_indices"].tolist() == [5, 6, 8]  # only the pages 10 tokens need
    assert m["kv_indptr"].tolist() == [0, 3] and m["kv_last_page_len"].tolist() == [2]
    assert m["append_indptr"].tolist() == [0, 10] and m["seq_lens"].tolist() == [10]
    assert append_metadata([1, 2], seq_len=8, page_size=4)["kv_last_page_len"].tolist() == [4]
    assert pages_needed(0, 4) == 0 and pages_needed(9, 4) == 3


@pytest.mark.parametrize(
    "src_l,dst_l,method",
    [
        (PagedKVLayout(4, 2, 8, "NHD"), PagedKVLayout(4, 2, 8, "NHD"), "pages"),
        (PagedKVLayout(4, 2, 8, "NHD"), PagedKVLayout(8, 2, 8, "HND"), "reference"),  # re-paging + layout change
        (PagedKVLayout(16, 2, 8, "HND"), PagedKVLayout(1, 2, 8, "NHD"), "reference"),
    ],
)
def test_copy_moves_exactly_the_requests_tokens_on_cpu(src_l, dst_l, method):
    seq_len, layers = 13, 3
    src = filled_pool(src_l, 12, layers)
    dst = [torch.zeros(dst_l.cache_shape(40)) for _ in range(layers)]
    src_pages = [9, 3, 0, 5, 11, 1, 2, 4, 6, 7, 8, 10, 12][: pages_needed(seq_len, src_l.page_size)]
    dst_pages = list(range(39, 39 - pages_needed(seq_len, dst_l.page_size), -1))
    res = copy_request_kv(src, src_l, src_pages, dst, dst_l, dst_pages, seq_len, method=method)
    assert res.method == method and res.tokens == seq_len and res.bytes > 0 and res.gbps > 0
    for s, d in zip(src, dst):
        ks, vs = gather_tokens(s, src_l, src_pages, seq_len)
        kd, vd = gather_tokens(d, dst_l, dst_pages, seq_len)
        assert torch.equal(ks, kd) and torch.equal(vs, vd)
    # nothing outside the destination pages was written
    untouched = [p for p in range(40) if p not in dst_pages]
    assert all(float(d[untouched].abs().sum()) == 0.0 for d in dst)


def test_bad_inputs_fail_clearly():
    lay = PagedKVLayout(4, 2, 8)
    src = filled_pool(lay, 4, 1)
    dst = [torch.zeros(lay.cache_shape(4))]
    with pytest.raises(ValueError, match="need 3 pages"):
        copy_request_kv(src, lay, [0, 1], dst, lay, [0, 1, 2], 10)
    with pytest.raises(ValueError, match="out of range"):
        copy_request_kv(src, lay, [0, 1, 7], dst, lay, [0, 1, 2], 10)
    with pytest.raises(ValueError, match="duplicate"):
        copy_request_kv(src, lay, [0, 1, 2], dst, lay, [0, 0, 2], 10)
    with pytest.raises(ValueError, match="does not match"):
        copy_request_kv(src, lay, [0, 1, 2], [torch.zeros(4, 2, 8, 2, 8)], lay, [0, 1, 2], 10)
    with pytest.raises(ValueError, match="layout must be"):
        PagedKVLayout(4, 2, 8, "XYZ")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dst_layout", ["NHD", "HND"])
def test_flashinfer_copy_between_pools_on_gpu(dst_layout):
    pytest.importorskip("flashinfer")
    src_dev = torch.device("cuda:0")
    dst_dev = torch.device("cuda:1" if torch.cuda.device_count() > 1 else "cuda:0")
    src_l = PagedKVLayout(16, 8, 128, "NHD")
    dst_l = PagedKVLayout(16, 8, 128, dst_layout)
    seq_len, layers = 1000, 4
    src = [t.half() for t in filled_pool(src_l, 80, layers, device=src_dev)]
    dst = [torch.zeros(dst_l.cache_shape(100), dtype=torch.half, device=dst_dev) for _ in range(layers)]
    src_pages = list(range(5, 5 + pages_needed(seq_len, 16)))
    dst_pages = list(range(99, 99 - pages_needed(seq_len, 16), -1))
    res = copy_request_kv(src, src_l, src_pages, dst, dst_l, dst_pages, seq_len, method="flashinfer")
    for s, d in zip(src, dst):
        ks, vs = gather_tokens(s, src_l, src_pages, seq_len)
        kd, vd = gather_tokens(d, dst_l, dst_pages, seq_len)
        assert torch.equal(ks.to(dst_dev), kd) and torch.equal(vs.to(dst_dev), vd)
    assert res.gbps > 0
