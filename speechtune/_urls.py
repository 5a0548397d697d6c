"""Hiding credentials in URLs before they reach a message, a log, ``state.json`` or a report."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def mask_url(url: str) -> str:
    """``url`` with its password (``scheme://user:password@host``) replaced by ``***``.

    Storage and tracking URLs (``postgresql+psycopg://user:secret@db/st``) may embed credentials.
    A URL without a password comes back unchanged.
    """
    url = str(url)
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # unparseable: keep only what follows the credentials, if any
        return url.rsplit("@", 1)[-1]
    if password is None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{name}:***@{host}"))
