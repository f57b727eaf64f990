"""Running the real tools a test compares against (qemu-img, nbdinfo, mkfs, ...).

Under ``.ci/asan`` the sanitizer runtime is preloaded into every process through
``LD_PRELOAD``; tools that were not built for it can hang or abort with it (qemu-img
hangs in its coroutine setup).  ``tool_env`` is the environment without it, and
``run_tool`` runs a command with that environment and a bounded time.
"""
import os
import subprocess

_SANITIZER_VARS = ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS")


def tool_env(**extra):
    """``os.environ`` without the sanitizer preload, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _SANITIZER_VARS}
    env.update(extra)
    return env


def run_tool(argv, *, timeout=120, env=None, **kw):
    """``subprocess.run(argv)`` for a non-Python tool: no sanitizer preload, bounded time."""
    return subprocess.run(argv, env=tool_env(**(env or {})), timeout=timeout, **kw)
