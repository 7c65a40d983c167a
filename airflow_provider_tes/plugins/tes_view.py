"""The Airflow plugin that puts the TES view in the Airflow UI (entry point ``airflow.plugins``).

It is registered through the ``airflow.plugins`` entry point, which Airflow 3 loads in every
component; provider metadata (``get_provider_info()["plugins"]``) is loaded only with
``[core] lazy_discover_providers = False``, so it would not be enough. The FastAPI app
(Airflow >= 3.0) is built on first use, i.e. in the api-server only; the menu entry
(``external_views``, Airflow >= 3.1) embeds the page in the UI, and a "TES tasks" tab on each
DAG shows that DAG's tasks.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from airflow.plugins_manager import AirflowPlugin

#: Where the api-server mounts the view's app, and the page's path under the api-server's root.
URL_PREFIX = "/tes"
PAGE_PATH = f"{URL_PREFIX}/tasks"


def airflow_base_path() -> str:
    """The path the Airflow UI is served under (``[api] base_url``), without a trailing slash."""
    from airflow.configuration import conf

    base_url = conf.get("api", "base_url", fallback="/") or "/"
    return urlsplit(base_url).path.rstrip("/")


class TesViewPlugin(AirflowPlugin):
    """Adds the TES view: ``/tes/tasks`` on the api-server, and its entries in the UI."""

    name = "tes"

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        from airflow_provider_tes.plugins._app import create_app

        return [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "GA4GH TES tasks"}]

    @property
    def external_views(self) -> list[dict[str, Any]]:  # type: ignore[override]
        page = airflow_base_path() + PAGE_PATH
        return [
            {
                "name": "TES tasks",
                "href": page,
                "destination": "nav",
                "category": "browse",
                "url_route": "tes_tasks",
            },
            {
                "name": "TES tasks",
                "href": page + "?dag_id={DAG_ID}",
                "destination": "dag",
                "url_route": "tes_tasks_of_dag",
            },
        ]
