"""Keeping credentials out of every message: one home for masking and for safe URLs.

Airflow's secrets masker replaces registered values in logs, but only where the literal value
appears; a URL with userinfo, or the ``repr`` of a header, slips past it. So the provider never
puts such text into a message in the first place: URLs are shown through :func:`display_url`,
and credentials are registered with the masker (:func:`mask`) as soon as they are read.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit, urlunsplit

if TYPE_CHECKING:
    from airflow_provider_tes.models import TesTask


def mask(secret: str) -> None:
    """Register ``secret`` with Airflow's secrets masker (best effort)."""
    try:
        from airflow.sdk.log import mask_secret

        mask_secret(secret)
    except ImportError:  # pragma: no cover - Airflow always has it; masking is best effort
        pass


def display_url(url: str) -> str:
    """``url`` without userinfo, query or fragment: safe for messages.

    A URL that does not parse (a port that is not a number, say) is shown as ``<unparsable URL>``:
    the text after ``:`` may be the start of a password.
    """
    try:
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if port:
        netloc = f"{netloc}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class Scrubber:
    """Replaces every known secret in a text with ``***``: the last filter before a message leaves.

    The hook feeds it the connection's credential and each OAuth2 access token as it is issued;
    every error message and retry warning of the request path passes through it. It also knows
    the forms a secret takes in transit (URL-quoted, JSON- or repr-escaped, inside a Basic
    header), which the Airflow masker, matching the literal value only, misses.
    """

    #: Shorter values are not replaced: they would blank out ordinary words.
    MIN_LENGTH = 4

    def __init__(self) -> None:
        self._needles: set[str] = set()

    def add(self, secret: str | None, *, login: str | None = None) -> None:
        """Know ``secret`` (and, with ``login``, its HTTP Basic form) from now on."""
        if not secret or len(secret) < self.MIN_LENGTH:
            return
        forms = {secret, quote(secret, safe=""), json.dumps(secret)[1:-1], repr(secret)[1:-1]}
        if login is not None:
            forms.add(base64.b64encode(f"{login}:{secret}".encode()).decode("ascii"))
        self._needles |= forms

    def __call__(self, text: str) -> str:
        for needle in sorted(self._needles, key=len, reverse=True):
            if needle in text:
                text = text.replace(needle, "***")
        return text


def system_logs(task: TesTask, known_env: Iterable[str] = ()) -> list[str]:
    """The server's system logs of the task's last attempt, every executor ``env`` value replaced.

    Servers quote the container command there, env included (Funnel: ``--env-enc KEY=value``),
    and the Airflow masker knows none of those values (nor does the scheduler's copy of task
    logs under LocalExecutor mask anything). ``known_env``: values the caller sent, for a server
    whose FULL view leaves the executors' env out.
    """
    log = task.last_log
    if log is None or not log.system_logs:
        return []
    scrub = Scrubber()
    for value in [*known_env, *(v for e in task.executors for v in (e.env or {}).values())]:
        scrub.add(value)
    return [scrub(line) for line in log.system_logs]
