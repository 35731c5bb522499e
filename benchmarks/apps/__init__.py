"""The worker side of each system under test, one module per system.

Each module reads its queues and endpoint from the ``BENCH_*`` variables the
runner sets (see `benchmarks.apps.common`), so the same code serves every run.
"""
