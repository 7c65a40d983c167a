"""Apache Airflow provider for the GA4GH Task Execution Service (TES)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
