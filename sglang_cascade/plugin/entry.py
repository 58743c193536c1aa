"""Entry point registered under ``sglang.srt.plugins`` (see pyproject.toml).

SGLang's ``load_plugins()`` calls :func:`register` in every process (launcher first, before it parses
the command line; each scheduler process first thing), then ``HookRegistry.apply_hooks()``. We only
register hooks here; they do nothing unless ``--scheduler-plugin`` is given.
"""

from __future__ import annotations

_registered = False


def register() -> None:
    """Called by sglang's ``load_plugins()`` in every process; installs our hooks (idempotent)."""
    global _registered
    if _registered:
        return
    from .hooks import register_hooks

    register_hooks()
    _registered = True
