"""Policies: pure code over core views, one file per idea. See registry.py for names."""
