"""ember's OpenAI-compatible HTTP server (`ember serve`): FastAPI routes over an AsyncEngine.

Nothing here imports FastAPI at package import time, so `ember --help` stays fast and works
without the `serve` extra; `build_app` and `run_server` load it when called.
"""

from __future__ import annotations


def build_app(*args, **kwargs):
    from ember.server.app import build_app as build

    return build(*args, **kwargs)


def run_server(*args, **kwargs):
    from ember.server.launcher import run_server as run

    return run(*args, **kwargs)


__all__ = ["build_app", "run_server"]
