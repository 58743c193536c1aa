"""sglang-cascade: length-aware LLM serving for SGLang, from one GPU to a fleet."""

__version__ = "0.1.0"
