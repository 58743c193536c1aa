"""SGLang scheduler plugin: ``python -m sglang.launch_server ... --scheduler-plugin cascade``.

See docs/plugin.md. Importing this package imports no sglang; :mod:`.hooks` and :mod:`.batch_ops` do
when called.
"""
