"""CPU engine pieces that need no server: the sgl_kernel replacement, the import hook, the
switch-off guarantee, the tiny model, cpu_server's command line and ServerProcess shutdown."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sglang_cascade.testing import cpu_engine
from sglang_cascade.testing.cpu_server import build_command
from sglang_cascade.testing.server_fixture import ServerProcess, free_port, port_is_free

torch = pytest.importorskip("torch")


def _load_replacement():
    import importlib.util

    path = Path(cpu_engine.__file__).parent / "replacement.py"
    spec = importlib.util.spec_from_file_location("_cpu_engine_replacement_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300
    )


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    for k in (cpu_engine.ENV_VAR, "SGLANG_USE_CPU_ENGINE"):
        env.pop(k, None)
    env.pop("PYTHONPATH", None)
    return env


# ---------------------------------------------------------------- replacement ops


def test_assign_req_to_token_pool_matches_reference():
    rep = _load_replacement()
    pool = torch.full((4, 10), -1, dtype=torch.int32)
    rows = torch.tensor([2, 0, 3])
    start = torch.tensor([1, 0, 4])
    end = torch.tensor([3, 4, 5])
    locs = torch.arange(100, 107, dtype=torch.int64)
    rep.assign_req_to_token_pool_cpu(rows, pool, start, end, locs, 10)
    ref = torch.full((4, 10), -1, dtype=torch.int32)
    ref[2, 1:3] = torch.tensor([100, 101])
    ref[0, 0:4] = torch.tensor([102, 103, 104, 105])
    ref[3, 4:5] = torch.tensor([106])
    assert torch.equal(pool, ref)
    with pytest.raises(ValueError):
        rep.assign_req_to_token_pool_cpu(rows, pool, start, torch.tensor([3, 4, 11]), locs, 10)


def test_copy_all_layer_kv_cache_moves_rows_in_every_buffer_even_overlapping():
    rep = _load_replacement()
    k = torch.arange(6 * 4, dtype=torch.float32).view(6, 4).clone()
    v = torch.arange(6 * 3, dtype=torch.int16).view(6, 3).clone() * 7
    k0, v0 = k.clone(), v.clone()
    ptrs = torch.tensor([k.data_ptr(), v.data_ptr()], dtype=torch.uint64)
    strides = torch.tensor([k.stride(0) * k.element_size(), v.stride(0) * v.element_size()])
    tgt = torch.tensor([1, 2, 5])
    src = torch.tensor([0, 1, 3])  # row 1 is both a source and a target
    rep.copy_all_layer_kv_cache_cpu(ptrs, strides, tgt, src)
    for buf, orig in ((k, k0), (v, v0)):
        exp = orig.clone()
        exp[tgt] = orig[src]
        assert torch.equal(buf, exp)


@pytest.mark.parametrize(
    "name",
    [n for n in cpu_engine.CPU_PATH_NAMES if n not in ("assign_req_to_token_pool_cpu", "copy_all_layer_kv_cache_cpu")],
)
def test_speculative_ops_raise_instead_of_returning_dummies(name):
    rep = _load_replacement()
    with pytest.raises(NotImplementedError, match="speculative"):
        getattr(rep, name)(torch.zeros(1))


def test_unknown_names_raise_clear_attribute_error_and_no_amx_switch():
    rep = _load_replacement()
    for name in cpu_engine.CPU_PATH_NAMES:
        assert callable(getattr(rep, name))
    with pytest.raises(AttributeError, match="not provided by the sglang-cascade CPU engine"):
        rep.silu_and_mul  # noqa: B018
    assert not hasattr(rep, "convert_weight_packed")


# ---------------------------------------------------------------- import hook in fresh processes


def test_hook_serves_replacement_and_real_scalar_type_when_switched_on():
    env = cpu_engine.child_env(_clean_env())
    out = _run(
        """
        import json, sys, sgl_kernel
        from sgl_kernel.scalar_type import scalar_types
        res = {"file": sgl_kernel.__file__, "st": sys.modules["sgl_kernel.scalar_type"].__file__,
               "u4": str(scalar_types.uint4b8)}
        try:
            import sgl_kernel.kvcacheio
        except ModuleNotFoundError as e:
            res["sub"] = str(e)
        try:
            from sgl_kernel import silu_and_mul
        except ImportError as e:
            res["from"] = str(e)
        print(json.dumps(res))
    """,
        env,
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["file"].endswith("cpu_engine/replacement.py")
    real = cpu_engine.real_sgl_kernel_dir()
    if real is not None:
        assert res["st"] == str(real / "scalar_type.py")
        assert res["u4"] == "uint4b8"
    assert "not provided by the sglang-cascade CPU engine" in res["sub"]
    assert "replacement.py" in res["from"]


def test_hook_does_nothing_when_switch_is_off():
    """With our site dir on PYTHONPATH but the switch off, imports behave as stock."""
    stock = _clean_env()
    off = dict(stock, PYTHONPATH=cpu_engine.SITE_DIR)
    code = """
        import json, sys
        try:
            import sgl_kernel
            res = {"ok": True, "file": sgl_kernel.__file__}
        except BaseException as e:
            res = {"ok": False, "err": type(e).__name__}
        res["ours"] = sorted(m for m in sys.modules if m.startswith("sglang_cascade"))
        res["hook"] = any(type(f).__name__ == "_Finder" for f in sys.meta_path)
        print(json.dumps(res))
    """
    a, b = _run(code, stock), _run(code, off)
    assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
    ra = json.loads(a.stdout.strip().splitlines()[-1])
    rb = json.loads(b.stdout.strip().splitlines()[-1])
    assert ra == rb
    assert rb["ours"] == [] and rb["hook"] is False
    if not rb["ok"]:
        assert rb["err"] in ("ImportError", "OSError", "ModuleNotFoundError")


@pytest.mark.sglang
def test_importing_sglang_with_switch_off_loads_nothing_of_ours():
    pytest.importorskip("sglang")
    env = dict(_clean_env(), PYTHONPATH=cpu_engine.SITE_DIR)
    out = _run(
        """
        import sys, json
        import sglang
        from sglang.srt.utils import is_cpu
        print(json.dumps({"ours": sorted(m for m in sys.modules if m.startswith("sglang_cascade")),
                          "sgl_kernel": "sgl_kernel" in sys.modules and
                              "cpu_engine" in (sys.modules["sgl_kernel"].__file__ or ""),
                          "is_cpu": is_cpu()}))
    """,
        env,
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res == {"ours": [], "sgl_kernel": False, "is_cpu": False}


# ---------------------------------------------------------------- tiny model


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_tiny_model_is_deterministic_and_loads_with_transformers(tmp_path):
    pytest.importorskip("tokenizers")
    pytest.importorskip("safetensors")
    from sglang_cascade.testing.tiny_model import ensure_tiny_model

    a = ensure_tiny_model(tmp_path / "a")
    b = ensure_tiny_model(tmp_path / "b")
    da = _digest(a)
    assert da == _digest(b)
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"} <= set(da)
    mtime = (a / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model(a) == a and (a / "model.safetensors").stat().st_mtime_ns == mtime

    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(a))
    cfg = json.loads((a / "config.json").read_text())
    assert len(tok) == cfg["vocab_size"]
    ids = tok("The cat is happy.").input_ids
    assert tok.decode(ids) == "The cat is happy."
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|user|>hi</s><|assistant|>"
    from safetensors.torch import load_file

    w = load_file(str(a / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in w.values())
    assert w["lm_head.weight"].shape == (cfg["vocab_size"], cfg["hidden_size"])


# ---------------------------------------------------------------- cpu_server command line


def test_cpu_server_command_adds_defaults_and_passes_through(tmp_path, monkeypatch):
    monkeypatch.setattr("sglang_cascade.testing.cpu_server.ensure_tiny_model", lambda d=None: tmp_path)
    cmd, env = build_command(["--port", "1234", "--scheduler-plugin", "cascade", "--dtype=bfloat16"])
    assert cmd[1:3] == ["-m", "sglang.launch_server"]
    joined = " ".join(cmd)
    assert f"--model-path {tmp_path}" in joined
    assert "--device cpu" in joined and "--max-total-tokens 16384" in joined
    assert "--sleep-on-idle" in cmd
    assert "--dtype=bfloat16" in cmd and "float32" not in cmd  # a given flag is not duplicated
    assert cmd.count("--port") == 1 and "--scheduler-plugin" in cmd
    assert env[cpu_engine.ENV_VAR] == "1" and env["SGLANG_USE_CPU_ENGINE"] == "1"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == cpu_engine.SITE_DIR
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert build_command([])[1]["OMP_NUM_THREADS"] == "1"
    assert build_command(["--threads", "2"])[1]["OMP_NUM_THREADS"] == "2"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert build_command([])[1]["OMP_NUM_THREADS"] == "3"
    with pytest.raises(SystemExit):
        build_command(["--threads", "0"])
    cmd2, _ = build_command(["--model-path", "/some/model", "--max-total-tokens", "999"])
    assert "/some/model" in cmd2 and str(tmp_path) not in cmd2 and cmd2.count("--max-total-tokens") == 1


# ---------------------------------------------------------------- ServerProcess lifecycle


class _StubbornTree(ServerProcess):
    """A process that ignores SIGTERM and has a child: stop() must still clear the group."""

    def command(self):
        code = (
            "import signal,subprocess,sys,time;signal.signal(signal.SIGTERM,signal.SIG_IGN);"
            "subprocess.Popen([sys.executable,'-c','import time;time.sleep(600)']);time.sleep(600)"
        )
        return [sys.executable, "-c", code]


def test_server_process_stop_kills_the_whole_group_after_timeout():
    s = _StubbornTree().start()
    time.sleep(1.0)
    pgid = s.pid
    t = time.monotonic()
    s.stop(timeout=1.0)
    assert time.monotonic() - t < 10
    assert s.proc.poll() is not None
    time.sleep(0.3)
    left = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.split()
    alive = [
        p
        for p in left
        if Path(f"/proc/{p}/stat").exists() and Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    ]
    assert alive == []


def test_server_process_refuses_a_busy_port_and_reports_early_exit():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        assert not port_is_free("127.0.0.1", port)
        with pytest.raises(RuntimeError, match="already in use"):
            ServerProcess(port=port).start()

    class _Dies(ServerProcess):
        def command(self):
            return [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]

    s = _Dies(port=free_port()).start()
    with pytest.raises(RuntimeError, match="exited with 3"):
        s.wait_ready(timeout=20)
    assert "boom" in s.log_tail()


def test_finder_steps_aside_when_cuda_is_visible(monkeypatch):
    """On a GPU machine the real sgl_kernel is used even with the switch on."""
    import types

    finder = cpu_engine._Finder()
    fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: True))
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    assert finder.find_spec("sgl_kernel") is None
    assert finder.find_spec("sgl_kernel.kvcacheio") is None
    fake_torch.cuda.is_available = lambda: False
    spec = finder.find_spec("sgl_kernel")
    assert spec is not None and spec.origin.endswith("replacement.py")
    assert finder.find_spec("numpy") is None  # other modules are never touched
