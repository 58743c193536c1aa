"""Pure-torch stand-in for ``sgl_kernel`` (served only when SGLANG_CASCADE_CPU_ENGINE=1).

SGLang 0.5.23 imports these names from ``sgl_kernel`` at module load when ``_is_cpu``:

- ``assign_req_to_token_pool_cpu``, ``copy_all_layer_kv_cache_cpu``: implemented here in torch,
  with the semantics of SGLang's Triton kernels of the same purpose
  (``mem_cache/allocation.py:assign_req_to_token_pool``, ``kernels/ops/kvcache/cache_move.py``).
- speculative-decoding helpers (``*_draft_*``, ``*_tree_*``, ``fill_*``, ``rotate_input_ids_cpu``):
  they must exist for SGLang to import, but the CPU engine does not support speculative decoding,
  so calling one raises ``NotImplementedError`` (never a dummy result).

Compute ops (matmul, norms, attention, activation) are not here: without AMX SGLang uses its own
torch paths, because ``torch.ops.sgl_kernel.convert_weight_packed`` is deliberately NOT defined
(defining it would switch AMX machines onto kernels we do not have). Any other attribute raises
``AttributeError`` naming this module. ``sgl_kernel.scalar_type`` is the real pure-Python file from
the installed wheel (see the finder in ``cpu_engine/__init__.py``).
"""

from __future__ import annotations

import ctypes

import torch

__version__ = "cpu-engine"
_ENGINE = "sglang-cascade CPU engine (SGLANG_CASCADE_CPU_ENGINE=1)"


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """``req_to_token[req_pool_indices[i], start[i]:end[i]] = out_cache_loc[o_i : o_i + end[i]-start[i]]``
    where ``o_i`` is the sum of the lengths of the requests before ``i`` (in place)."""
    if req_to_token.shape[1] != pool_len:
        raise ValueError(f"pool_len {pool_len} != req_to_token.shape[1] {req_to_token.shape[1]}")
    starts = start_offset.tolist()
    ends = end_offset.tolist()
    rows = req_pool_indices.tolist()
    off = 0
    for row, s, e in zip(rows, starts, ends):
        n = e - s
        if n < 0 or e > pool_len:
            raise ValueError(f"bad slot range [{s}, {e}) for pool_len {pool_len}")
        if n:
            req_to_token[row, s:e] = out_cache_loc[off : off + n].to(req_to_token.dtype)
        off += n


def copy_all_layer_kv_cache_cpu(
    data_ptrs: torch.Tensor,
    strides: torch.Tensor,
    tgt_loc: torch.Tensor,
    src_loc: torch.Tensor,
) -> None:
    """For every buffer ``b`` (base address ``data_ptrs[b]``, row size ``strides[b]`` bytes) copy
    rows ``src_loc`` to rows ``tgt_loc``. All source rows are read before any is written, so
    overlapping moves are safe (as in SGLang's tiled Triton kernel)."""
    if tgt_loc.numel() != src_loc.numel():
        raise ValueError("tgt_loc and src_loc must have the same length")
    if tgt_loc.numel() == 0:
        return
    tgt = tgt_loc.to(torch.long)
    src = src_loc.to(torch.long)
    rows = int(max(tgt.max().item(), src.max().item())) + 1
    for base, stride in zip(data_ptrs.tolist(), strides.tolist()):
        raw = (ctypes.c_uint8 * (rows * stride)).from_address(int(base))
        view = torch.frombuffer(raw, dtype=torch.uint8).view(rows, stride)
        view[tgt] = view[src].clone()


def _unsupported(name: str):
    def op(*args, **kwargs):
        raise NotImplementedError(
            f"sgl_kernel.{name} is a speculative-decoding kernel; the {_ENGINE} does not "
            "implement it. Run without --speculative-algorithm."
        )

    op.__name__ = name
    op.__qualname__ = name
    return op


assign_draft_cache_locs_contiguous_cpu = _unsupported("assign_draft_cache_locs_contiguous_cpu")
assign_extend_cache_locs_cpu = _unsupported("assign_extend_cache_locs_cpu")
build_tree_kernel_efficient_cpu = _unsupported("build_tree_kernel_efficient_cpu")
verify_tree_greedy_cpu = _unsupported("verify_tree_greedy_cpu")
fill_accept_out_cache_loc_cpu = _unsupported("fill_accept_out_cache_loc_cpu")
fill_bonus_tokens_cpu = _unsupported("fill_bonus_tokens_cpu")
rotate_input_ids_cpu = _unsupported("rotate_input_ids_cpu")


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    raise AttributeError(
        f"sgl_kernel.{name} is not provided by the {_ENGINE}: it replaces sgl_kernel with the few "
        "pure-torch helpers SGLang imports on its CPU path. Unset SGLANG_CASCADE_CPU_ENGINE to use "
        "the real sgl_kernel (needs a GPU driver)."
    )
