"""``speechtune._urls``: no password survives ``mask_url`` or ``scrub``, however the URL is written."""

from __future__ import annotations

import io
import logging

import pytest
from sqlalchemy.engine import make_url

from speechtune._urls import ScrubFilter, has_password, mask_url, scrub, url_secrets

# (url, the secrets that must not survive, what must survive). Each secret is also a string no
# other part of its URL contains, so that "not in the output" is a real test.
TRICKY: list[tuple[str, list[str], list[str]]] = [
    (
        "postgresql+psycopg://user:p#ss/w?rd@db:5432/st",
        ["p#ss/w?rd", "p#ss", "w?rd"],
        ["postgresql+psycopg://user:", "@db:5432/st"],
    ),
    ("postgresql://tuner:hunter2@db.example/st", ["hunter2"], ["tuner", "db.example/st"]),
    ("postgresql://tuner:ab@cd@db/st", ["ab@cd", "cd@db"], ["@db/st"]),  # unencoded "@"
    ("mysql://u:p%40ss%2Fw0rd@h:3306/d", ["p%40ss%2Fw0rd", "p@ss/w0rd"], ["@h:3306/d"]),
    ("postgresql://:onlypw99@h/d", ["onlypw99"], ["@h/d"]),
    ("postgresql://u:pa:ss:99@h/d", ["pa:ss:99", "ss:99"], ["@h/d"]),
    ("postgresql://u:pw1234@[::1]:5432/d", ["pw1234"], ["[::1]:5432/d"]),
    (
        "postgresql+psycopg://u@db/st?sslmode=require&password=q-s3cret&application_name=x",
        ["q-s3cret"],
        ["sslmode=require", "application_name=x"],
    ),
    ("postgresql:///st?host=/var/run/pg&PassWord=zz-top-77", ["zz-top-77"], ["host=/var/run/pg"]),
    ("postgresql://u@h/d?pwd=Pwd-Val-1&pass=Pass-Val-2", ["Pwd-Val-1", "Pass-Val-2"], ["u@h/d"]),
    (
        "https://mlflow.example:5000/api?api_key=AK-123456&Access-Key=AX-987654&x=1",
        ["AK-123456", "AX-987654"],
        ["mlflow.example:5000", "x=1"],
    ),
    ("https://bob:t0ken!xyz@mlflow.example/?token=tk-55555", ["t0ken!xyz", "tk-55555"], ["bob"]),
    ("http://u:sp ace@host:5000/", ["sp ace"], ["host:5000"]),
    ("journal:////tmp/run/journal.log?secret=js-4242", ["js-4242"], ["/tmp/run/journal.log"]),
    ("file:///tmp/x.log?client_secret=cs-7777&a=b", ["cs-7777"], ["a=b"]),
    ("postgresql://u:p&w=1@h/d?password=a&b&c=d", ["p&w=1", "a&b"], ["c=d"]),
    ("host=db port=5432 user=me password='quoted pw!'", ["quoted pw!"], ["host=db"]),
    ("postgresql://u:café-пароль@h/d", ["café-пароль"], ["@h/d"]),
]


@pytest.mark.parametrize(("url", "secrets", "kept"), TRICKY, ids=[u for u, _, _ in TRICKY])
def test_mask_url_hides_every_secret(url: str, secrets: list[str], kept: list[str]) -> None:
    masked = mask_url(url)
    for secret in secrets:
        assert secret not in masked, masked
    for part in kept:  # still says which database or server it is
        assert part in masked, masked
    assert "***" in masked and has_password(url)
    assert mask_url(masked) == masked  # masking twice changes nothing


@pytest.mark.parametrize(("url", "secrets", "kept"), TRICKY, ids=[u for u, _, _ in TRICKY])
def test_scrub_hides_the_secrets_a_driver_message_quotes(
    url: str, secrets: list[str], kept: list[str]
) -> None:
    # A message that quotes the URL, and the host the driver was given (an unencoded "@" makes
    # SQLAlchemy hand the driver the password's tail as part of the host name).
    try:
        host = make_url(url).host or ""
    except Exception:
        host = ""
    message = f"cannot connect to {url!r}: could not translate host name {host!r} to address"
    assert all(secret not in scrub(message, [url]) for secret in secrets)
    # Without the URL at hand, a URL in the text is still masked.
    if " " not in secrets[0] and "://" in url:
        assert secrets[0] not in scrub(f"error: {url} failed")


@pytest.mark.parametrize("url", [u for u, _, _ in TRICKY if "://" in u])
def test_the_password_the_driver_gets_is_never_kept(url: str) -> None:
    parsed = make_url(url)
    masked = mask_url(url)
    if parsed.password:
        assert str(parsed.password) not in masked.replace("***", "")
    assert all(s in url_secrets(url) for s in ([parsed.password] if parsed.password else []))


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///runs/demo/study.db",
        "sqlite:////tmp/a@b/study.db",  # an "@" in a path is not a password
        "journal:////tmp/run@2/journal.log",
        "journal",
        "memory",
        "postgresql+psycopg://tuner@db:5432/st",
        "http://token@mlflow.example",  # a user name alone is not hidden
        "https://mlflow.example:5000/#/experiments/1",
        "databricks",
        "runs/demo",
        "",
        "postgresql://u@h/d?sslkey=/etc/key.pem&passfile=/home/u/.pgpass",
    ],
)
def test_a_url_without_a_password_is_unchanged(url: str) -> None:
    assert mask_url(url) == url and not has_password(url)


@pytest.mark.parametrize("value", [None, 42, b"postgresql://u:pw@h/d", object(), "\x00:\udcff@"])
def test_mask_url_never_raises(value: object) -> None:
    assert isinstance(mask_url(value), str)
    assert isinstance(scrub(value, [value]), str)


def test_an_unparseable_url_comes_back_fully_masked_rather_than_raise() -> None:
    class Hostile:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    assert mask_url(Hostile()) == "***"
    assert scrub(Hostile()) == "***"


def test_scrub_leaves_other_text_alone() -> None:
    url = "postgresql://u:p@h/d"  # a one-letter password: hidden only where it stands apart
    assert scrub("postgresql failed on host 'p'", [url]) == "postgresql failed on host '***'"
    assert scrub("see https://docs.example/page?id=3 and retry") == (
        "see https://docs.example/page?id=3 and retry"
    )


def test_the_log_filter_masks_urls_in_any_record() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ScrubFilter())
    logger = logging.getLogger("tests.test_urls")
    logger.addHandler(handler)
    try:
        logger.warning("API request to %s failed", "https://u:pw-5150@mlflow.example/api/2.0/x")
        logger.warning("plain %d%%", 5)
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue().splitlines() == [
        "API request to https://u:***@mlflow.example/api/2.0/x failed",
        "plain 5%",
    ]
