"""The real things started as processes (the sandbox, Celery workers) for tests and benchmarks.
No production code imports this package."""
