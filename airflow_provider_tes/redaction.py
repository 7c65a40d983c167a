"""Keeping credentials out of every message: one home for masking and for safe URLs.

Airflow's secrets masker replaces registered values in logs, but only where the literal value
appears; a URL with userinfo, or the ``repr`` of a header, slips past it. So the provider never
puts such text into a message in the first place: URLs are shown through :func:`display_url`,
and credentials are registered with the masker (:func:`mask`) as soon as they are read.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


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
