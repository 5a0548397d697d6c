"""Hiding credentials in URLs before they reach a message, a log, ``state.json`` or a report.

Storage and tracking URLs (``postgresql+psycopg://user:secret@db/st``, ``https://u:p@mlflow``)
may embed a password, in the userinfo or as a query parameter (``?password=...``). Passwords are
often written unencoded, with ``#``, ``/``, ``?`` or even ``@`` in them, which a standard URL
parser splits in the wrong place; so the userinfo is taken up to the *last* ``@`` of the URL,
which always covers what SQLAlchemy (and so the database driver) reads as the password. When the
split is ambiguous (an ``@`` further on, in a path or query) more is hidden, never less.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import unquote

#: What a hidden secret is replaced with.
MASK = "***"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# A query parameter (?name=value or &name=value); its value runs up to the next "&name=" or the
# end, so that an unencoded "&" inside a password is hidden too.
_QUERY_PARAM = re.compile(
    r"(?P<lead>[?&;])(?P<name>[^=&?;#\s]+)=(?P<value>.*?)(?=&[^=&?;#\s]+=|$)"
)
# libpq keyword/value strings (``host=db password=secret``), in case one is passed as a "URL".
_DSN_PARAM = re.compile(r"(?P<lead>(?:^|\s))(?P<name>\w+)\s*=\s*(?P<value>'(?:[^'\\]|\\.)*'|\S+)")
# Parameter names that carry a secret, compared with separators removed, lower case.
_SECRET_NAMES = frozenset({"pass", "pwd", "pw", "sig", "key"})
_SECRET_PARTS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "accesskey",
    "privatekey",
    "credential",
    "signature",
)
# A URL inside free text (an exception message): scheme:// up to whitespace or a quote.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]*")


def is_secret_name(name: str) -> bool:
    """Whether a query/DSN parameter called ``name`` holds a secret (``password``, ``api_key``...)."""
    norm = re.sub(r"[^a-z0-9]", "", unquote(name).lower())
    return norm in _SECRET_NAMES or any(part in norm for part in _SECRET_PARTS)


def _mask_params(text: str, pattern: re.Pattern[str]) -> str:
    def hide(m: re.Match[str]) -> str:
        if not is_secret_name(m["name"]) or not m["value"]:
            return m[0]
        return f"{m['lead']}{m['name']}={MASK}"

    return pattern.sub(hide, text)


def _split_userinfo(url: str) -> tuple[str, str, str, str] | None:
    """``(scheme://, user, password, rest)`` of a URL with a password in its userinfo, else None."""
    m = _SCHEME.match(url)
    if m is None:
        return None
    head, after = url[: m.end()], url[m.end() :]
    if after.startswith("/"):  # no authority (sqlite:///x, journal:////x, file:///x): no userinfo
        return None
    at = after.rfind("@")
    if at < 0:
        return None
    user, colon, password = after[:at].partition(":")
    if not colon or not password:
        return None
    return head, user, password, after[at:]


def mask_url(url: object) -> str:
    """``url`` with every password in it replaced by ``***``.

    Hidden: the userinfo password (``scheme://user:PASSWORD@host``, up to the last ``@`` so that
    unencoded ``#``, ``/``, ``?`` and ``@`` in it are covered), and the value of every query
    parameter whose name says it is a secret (``password``, ``pass``, ``pwd``, ``secret``,
    ``token``, ``api_key``, ``access_key``... in any case). A URL without a password comes back
    unchanged. Never raises: what cannot be read at all comes back as ``***``.

    Args:
        url: a storage or tracking URL (anything; it is turned into a string).

    Returns:
        The URL, safe to print, log or write to a file.
    """
    try:
        text = str(url)
        parts = _split_userinfo(text)
        if parts is not None:
            head, user, _password, rest = parts
            text = f"{head}{user}:{MASK}{rest}"
        if _SCHEME.match(text) is None and "=" in text and "?" not in text:
            text = _mask_params(text, _DSN_PARAM)
        text = _mask_params(text, _QUERY_PARAM)
        return text if _driver_secrets_hidden(str(url), text) else _fallback(text)
    except Exception:  # a mask must never be the reason a message is lost
        return MASK


def _driver_secrets_hidden(url: str, masked: str) -> bool:
    """Whether the secrets SQLAlchemy would read from ``url`` are gone from ``masked`` (a cross-check)."""
    return not _sqlalchemy_secrets(url) & _sqlalchemy_secrets(masked)


def _sqlalchemy_secrets(url: str) -> set[str]:
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception:
        return set()
    out = {str(parsed.password)} if parsed.password not in (None, MASK) else set()
    for name, value in parsed.query.items():
        if is_secret_name(name):
            out.update(v for v in ([value] if isinstance(value, str) else value) if v != MASK)
    return out


def _fallback(text: str) -> str:
    m = _SCHEME.match(text)
    return f"{m[1]}://{MASK}" if m else MASK


def has_password(url: object) -> bool:
    """Whether ``url`` carries a password (that :func:`mask_url` would hide)."""
    return mask_url(url) != str(url)


def url_secrets(url: object) -> list[str]:
    """The secrets of ``url``, longest first: its password(s) and secret query values.

    Both readings of the password are included: up to the last ``@`` (what :func:`mask_url`
    hides) and up to the first (what SQLAlchemy hands the driver), and the pieces between the
    ``@`` signs, which a driver error may quote as a host name.
    """
    try:
        text = str(url)
        found: set[str] = set()
        parts = _split_userinfo(text)
        if parts is not None:
            password = parts[2]
            found.add(password)
            found.update(piece for piece in password.split("@"))
            found.add(unquote(password))
        found.update(_sqlalchemy_secrets(text))  # what the driver would get
        for pattern in (_QUERY_PARAM, _DSN_PARAM):
            for m in pattern.finditer(text):
                if is_secret_name(m["name"]) and m["value"]:
                    found.update({m["value"], unquote(m["value"]), m["value"].strip("'")})
        return sorted((s for s in found if s), key=len, reverse=True)
    except Exception:
        return []


def scrub(text: object, urls: Iterable[object] = ()) -> str:
    """``text`` (e.g. an exception message) with URLs in it masked and the secrets of ``urls`` hidden.

    Each of ``urls`` that the text quotes is replaced by its masked form, and every secret of
    theirs (:func:`url_secrets`) that still appears, by ``***``: a secret shorter than six
    characters only where it stands apart (not inside a longer word), so that a short password
    does not garble the message. Then any other ``scheme://...`` in the text goes through
    :func:`mask_url`.

    Args:
        text: the message.
        urls: the URLs whose secrets the message might quote (the storage URL in use...).

    Returns:
        The message, safe to print. Never raises.
    """
    try:
        out = str(text)
        for url in urls:
            out = out.replace(str(url), mask_url(url))
            for secret in url_secrets(url):
                if len(secret) >= 6:
                    out = out.replace(secret, MASK)
                else:
                    bounded = rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])"
                    out = re.sub(bounded, MASK, out)
        return _URL_IN_TEXT.sub(lambda m: mask_url(m[0]), out)
    except Exception:
        return MASK


class ScrubFilter(logging.Filter):
    """A logging filter that passes every record's message through :func:`scrub`.

    A backstop on the console handler: other libraries' messages (MLflow's failed HTTP requests,
    a driver's connection errors logged as warnings) may quote a URL with its password.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask the URLs in ``record``'s message; never drops a record."""
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not format: logging reports it itself
            return True
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True
