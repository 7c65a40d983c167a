"""Benchmarks of airflow-provider-tes (``make bench`` / ``python -m benchmarks.run [--quick]``).

Every figure is reported as a ratio against a baseline measured in the same run on the same
machine; see ``benchmarks/run.py``.
"""
