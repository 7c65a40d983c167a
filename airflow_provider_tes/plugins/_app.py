"""The TES view's FastAPI app, mounted by the api-server under ``URL_PREFIX`` (``/tes``).

Airflow does not authenticate a plugin's FastAPI app (a mount inherits none of the core API's
dependencies), so the page takes its user from Airflow's own dependency, ``GetUserDep``
(``get_user``: what every core API route and 3.1's ``requires_authenticated()`` rely on), which
answers 401 without a valid token. It reads a bearer token, and from Airflow 3.2 on also the
UI's session cookie, which is what lets the page open inside the UI. The user then sees only
the tasks of DAGs the auth manager lets them read. TES is reached through :class:`TesHook`, so the
connection's auth, TLS and timeouts apply, and its errors arrive with credentials scrubbed.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import cache
from typing import Annotated

from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import FastAPI, Query
from fastapi.responses import HTMLResponse

from airflow_provider_tes.exceptions import TesConfigurationError, TesError
from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.links import task_link
from airflow_provider_tes.models import TesState
from airflow_provider_tes.plugins._listing import DEFAULT_LIMIT, MAX_LIMIT, list_deployment_tasks
from airflow_provider_tes.plugins._page import SECURITY_HEADERS, Links, ViewQuery, render_error, render_page
from airflow_provider_tes.plugins.tes_view import PAGE_PATH, URL_PREFIX, airflow_base_path

#: The page's path in the app (the api-server mounts the app at ``URL_PREFIX``).
TASKS_PATH = PAGE_PATH.removeprefix(URL_PREFIX)
#: What a connection id may look like here (Airflow's own ids fit; nothing else is looked up).
_CONN_ID = re.compile(r"[A-Za-z0-9_.\-]{1,250}")


@cache
def create_app() -> FastAPI:
    app = FastAPI(title="GA4GH TES tasks", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_api_route(
        TASKS_PATH,
        tasks_page,
        methods=["GET"],
        response_class=HTMLResponse,
    )
    return app


def tasks_page(
    user: GetUserDep,
    conn_id: Annotated[str, Query(max_length=250)] = TesHook.default_conn_name,
    dag_id: Annotated[str | None, Query(max_length=250)] = None,
    state: TesState | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> HTMLResponse:
    """This deployment's TES tasks through connection ``conn_id`` (sync: FastAPI runs it in a thread)."""
    query = ViewQuery(conn_id=conn_id, dag_id=dag_id or None, state=state, limit=limit)
    if not _CONN_ID.fullmatch(conn_id):
        return _html(render_error(query, "not a connection id"), 400)
    try:
        with TesHook(conn_id) as hook:
            listing = list_deployment_tasks(
                hook,
                dag_id=query.dag_id,
                state=state,
                limit=limit,
                permitted_dags=lambda dag_ids: _readable(user, dag_ids),
            )
            base_url, template = hook.settings.base_url, hook.settings.task_link_template
    except TesConfigurationError as err:
        return _html(render_error(query, str(err)), 400)
    except TesError as err:
        return _html(render_error(query, str(err)), 502)
    links = Links(airflow_base_path(), lambda tes_id: task_link(base_url, tes_id, template))
    return _html(render_page(query, listing, links, datetime.now(UTC)), 200)


def _readable(user: BaseUser, dag_ids: set[str]) -> set[str]:
    """The DAGs of ``dag_ids`` the user may read, asked of the auth manager by id.

    By id rather than from the DAG table, so the tasks of a DAG that was since removed are
    shown to those who may read every DAG, and to nobody else.
    """
    from airflow.api_fastapi.app import get_auth_manager

    return set(get_auth_manager().filter_authorized_dag_ids(dag_ids=dag_ids, user=user, method="GET"))


def _html(content: str, status: int) -> HTMLResponse:
    return HTMLResponse(content, status_code=status, headers=SECURITY_HEADERS)
