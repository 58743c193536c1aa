"""Entry point registered under ``sglang.srt.plugins`` (see pyproject.toml)."""


def register() -> None:
    """Called by sglang's ``load_plugins()`` in every process; installs our hooks."""
    return None
