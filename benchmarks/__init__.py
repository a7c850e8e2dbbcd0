"""Micro-benchmarks of the job layer against bare FastAPI + Celery: `python -m benchmarks`."""
