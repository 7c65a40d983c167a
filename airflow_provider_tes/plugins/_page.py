"""The TES view as server-rendered HTML: no script, every value escaped where it is written.

Everything on the page comes from a TES server or a request (tags, ids, states, query
parameters), so nothing is written without :func:`html.escape`, URL path segments are
percent-encoded, and a link whose URL is not http(s) is shown as text. The response forbids
scripts, frames and foreign form targets (Content-Security-Policy), so a value that slipped
through could not run anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from html import escape
from urllib.parse import quote, urlencode, urlsplit

from airflow_provider_tes.models import TesState
from airflow_provider_tes.plugins._listing import STATE_ORDER, TesListing, TesTaskRow

#: Headers of every response of the view.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:16px;color:#1a202c;
font-size:14px}
h1{font-size:20px;margin:0 0 4px}
.meta{color:#4a5568;margin:0 0 12px}
.counts{display:flex;flex-wrap:wrap;gap:8px;margin:0 0 12px;padding:0;list-style:none}
.counts a{display:block;padding:6px 10px;border:1px solid #cbd5e0;border-radius:6px;text-decoration:none;
color:inherit}
.counts a.selected{border-color:#2b6cb0;background:#ebf8ff}
.counts b{font-size:16px;margin-left:4px}
form{display:flex;gap:8px;align-items:end;margin:0 0 12px}
label{display:flex;flex-direction:column;font-size:12px;color:#4a5568}
input,select,button{font:inherit;padding:4px 6px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #e2e8f0;white-space:nowrap}
th{background:#f7fafc;font-size:12px;text-transform:uppercase;color:#4a5568}
td.run{white-space:normal;word-break:break-all}
.note{background:#fffaf0;border:1px solid #f6ad55;border-radius:6px;padding:6px 10px;margin:0 0 12px}
.error{background:#fff5f5;border:1px solid #fc8181;border-radius:6px;padding:8px 12px}
.state{display:inline-block;padding:2px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff}
"""
_STATE_COLOURS = {
    TesState.RUNNING: "#38a169",
    TesState.INITIALIZING: "#3182ce",
    TesState.QUEUED: "#718096",
    TesState.PAUSED: "#805ad5",
    TesState.CANCELING: "#dd6b20",
    TesState.COMPLETE: "#2f855a",
    TesState.EXECUTOR_ERROR: "#c53030",
    TesState.SYSTEM_ERROR: "#9b2c2c",
    TesState.CANCELED: "#975a16",
    TesState.PREEMPTED: "#b7791f",
    TesState.UNKNOWN: "#4a5568",
}


@dataclass(frozen=True)
class ViewQuery:
    """The filters of one page view, as the query string gives them."""

    conn_id: str
    dag_id: str | None
    state: TesState | None
    limit: int

    def href(self, **changes: object) -> str:
        """A relative link to this view with some filters changed (``None`` drops one)."""
        params: dict[str, object] = {
            "conn_id": self.conn_id,
            "dag_id": self.dag_id,
            "state": self.state,
            "limit": self.limit,
            **changes,
        }
        return "?" + urlencode({k: str(v) for k, v in params.items() if v is not None and v != ""})


@dataclass(frozen=True)
class Links:
    """Where rows link to: the Airflow UI (under its base path) and the TES task."""

    airflow_base_path: str
    tes_task_url: Callable[[str], str]

    def task_instance(self, row: TesTaskRow) -> str:
        parts = (row.dag_id, row.run_id, row.task_id)
        dag, run, task = (quote(p, safe="") for p in parts)
        url = f"{self.airflow_base_path}/dags/{dag}/runs/{run}/tasks/{task}"
        return url + (f"/mapped/{row.map_index}" if row.map_index >= 0 else "")

    def dag(self, dag_id: str) -> str:
        return f"{self.airflow_base_path}/dags/{quote(dag_id, safe='')}"


def render_page(query: ViewQuery, listing: TesListing, links: Links, now: datetime) -> str:
    notes = _notes(query, listing)
    body = [
        "<h1>TES tasks</h1>",
        f'<p class="meta">Submitted by deployment <code>{_e(listing.deployment)}</code> through '
        f"connection <code>{_e(query.conn_id)}</code>; {listing.shown_total} shown of "
        f"{listing.read} read.</p>",
        *(f'<p class="note">{note}</p>' for note in notes),
        _counts(query, listing),
        _form(query),
        _table(listing, links, now),
    ]
    return _document("\n".join(body))


def render_error(query: ViewQuery, message: str) -> str:
    return _document(
        "<h1>TES tasks</h1>\n"
        f'<p class="error">Could not list the TES tasks of connection <code>{_e(query.conn_id)}</code>: '
        f"{_e(message)}</p>\n{_form(query)}"
    )


def _document(body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>TES tasks</title><style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _notes(query: ViewQuery, listing: TesListing) -> list[str]:
    notes = []
    if listing.truncated:
        notes.append(
            f"Only the first {listing.read} tasks the server listed were read (limit {query.limit}); "
            "the counts cover those."
        )
    if not listing.verified:
        notes.append(
            "No tenant secret is configured, so tasks are shown by their deployment tag alone: "
            "another submitter could add tasks to this list."
        )
    if listing.unverified:
        notes.append(
            f"{listing.unverified} task(s) carry this deployment's name without its signature "
            "and are not shown."
        )
    if listing.not_permitted:
        notes.append(f"{listing.not_permitted} task(s) of DAGs you may not read are not shown.")
    return notes


def _counts(query: ViewQuery, listing: TesListing) -> str:
    items = [_count_item(query.href(state=None), "All", listing.shown_total, query.state is None, "")]
    for state in STATE_ORDER:
        if listing.counts[state]:
            selected = query.state is state
            items.append(
                _count_item(query.href(state=state), state.value, listing.counts[state], selected, state)
            )
    return '<ul class="counts">' + "".join(items) + "</ul>"


def _count_item(href: str, label: str, count: int, selected: bool, state: str) -> str:
    cls = ' class="selected"' if selected else ""
    return (
        f'<li data-count-state="{_e(state or "ALL")}" data-count="{count}"><a href="{_e(href)}"{cls}>'
        f"{_e(label)}<b>{count}</b></a></li>"
    )


def _form(query: ViewQuery) -> str:
    options = ['<option value="">any</option>'] + [
        f'<option value="{s.value}"{" selected" if query.state is s else ""}>{s.value}</option>'
        for s in STATE_ORDER
    ]
    return (
        '<form method="get">'
        f'<label>Connection<input name="conn_id" value="{_e(query.conn_id)}" size="16"></label>'
        f'<label>DAG<input name="dag_id" value="{_e(query.dag_id or "")}" size="24"></label>'
        f'<label>State<select name="state">{"".join(options)}</select></label>'
        f'<input type="hidden" name="limit" value="{query.limit}">'
        '<button type="submit">Filter</button></form>'
    )


def _table(listing: TesListing, links: Links, now: datetime) -> str:
    head = "".join(
        f"<th>{h}</th>" for h in ("State", "Age", "DAG", "Task", "Run", "Map index", "Try", "TES task")
    )
    if not listing.rows:
        return f'<table><thead><tr>{head}</tr></thead></table><p class="meta">No TES tasks match.</p>'
    rows = "\n".join(_row(row, links, now) for row in listing.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{rows}\n</tbody></table>"


def _row(row: TesTaskRow, links: Links, now: datetime) -> str:
    colour = _STATE_COLOURS.get(row.state, "#4a5568")
    attempt = f" (attempt {_e(row.attempt)})" if row.attempt not in ("", "0") else ""
    cells = [
        f'<span class="state" style="background:{colour}">{_e(row.state.value)}</span>',
        _e(format_age(row.age(now))),
        _link(links.dag(row.dag_id), row.dag_id, top=True),
        _link(links.task_instance(row), row.task_id, top=True),
        _e(row.run_id),
        "" if row.map_index < 0 else str(row.map_index),
        _e(row.try_number) + attempt,
        _link(links.tes_task_url(row.tes_task_id), row.tes_task_id, top=False),
    ]
    tds = "".join(f'<td class="run">{c}</td>' if i == 4 else f"<td>{c}</td>" for i, c in enumerate(cells))
    return (
        f'<tr data-state="{_e(row.state.value)}" data-tes-task-id="{_e(row.tes_task_id)}" '
        f'data-dag-id="{_e(row.dag_id)}">{tds}</tr>'
    )


def _link(url: str, text: str, *, top: bool) -> str:
    """``<a>`` to ``url``, opened over the Airflow UI (``top``) or in a new tab; text alone if not http(s)."""
    if not text:
        return ""
    local = url.startswith("/") and not url.startswith("//")
    if not local and urlsplit(url).scheme not in ("http", "https"):
        return _e(text)
    target = 'target="_top"' if top else 'target="_blank" rel="noopener noreferrer"'
    return f'<a href="{_e(url)}" {target}>{_e(text)}</a>'


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if s >= size:
            return f"{s // size}{unit} {s % size // sub_size}{sub}"
    return f"{s}s"


def _e(value: object) -> str:
    return escape(str(value), quote=True)
