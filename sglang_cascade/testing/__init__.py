"""Test and demo support: real SGLang on CPU.

- ``cpu_engine``: the import-time sgl_kernel replacement (switch: SGLANG_CASCADE_CPU_ENGINE=1).
- ``tiny_model``: writes the tiny Llama-style model (config, tokenizer, float32 safetensors).
- ``cpu_server``: ``python -m sglang_cascade.testing.cpu_server --port P [sglang args]``.
- ``server_fixture``: ServerProcess, server_fixture (pytest), free_port, HTTP helpers.
- ``fake_worker``: owned by the router part.

See docs/cpu_engine.md.
"""
