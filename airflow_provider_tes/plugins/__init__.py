"""The provider's Airflow plugin: a page in the Airflow UI listing this deployment's TES tasks.

Airflow imports the plugin (entry point ``airflow.plugins``) in every component, workers
included, so this package imports nothing heavy: the page's FastAPI app is built only when
the api-server asks the plugin for it.
"""
