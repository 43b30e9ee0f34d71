"""Benchmarks of dreambooth_async, each against an emulator in a process of its own.

Run them all with ``nox -s bench`` (``-- --quick`` for a short run) or ``python -m benchmarks``.
"""
