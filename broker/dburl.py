"""Database URLs as users write them, turned into what SQLAlchemy and psycopg2 accept.

libpq takes several hosts in one URL (`postgresql://u@db1:5432,db2:5432/lq?
target_session_attrs=read-write`) and tries them in order; SQLAlchemy's URL parser reads
`db1:5432,db2:5432` as one host and dies on the port. SQLAlchemy's own multi-host form puts
the hosts in the query (`?host=db1,db2&port=5432,5432`), which its psycopg2 dialect hands to
libpq as `host=db1,db2 port=5432,5432`: the same connection, so libpq's URL is rewritten to
that. Every other URL passes through unchanged.

Also here: a URL fit to print (password hidden, whatever its form), and the start-up check
that a multi-host URL has a synchronous standby behind it.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, unquote

from sqlalchemy.engine import URL, make_url

_POSTGRES = re.compile(r"^(postgres|postgresql)(\+\w+)?://", re.IGNORECASE)
_PASSWORD = re.compile(r"^(\w[\w+.-]*://[^:/@]*:)[^@]*@")
_IPV6_HOST = re.compile(r"^\[([^\]]*)\](?::(\d*))?$")
_HOST = re.compile(r"^([^:]*)(?::(\d*))?$")


def normalize(url: str) -> str:
    """A PostgreSQL URL with several hosts in libpq's form, in SQLAlchemy's; others as given.

    Raises ValueError for a multi-host URL SQLAlchemy could not take either (a bad port,
    hosts both in the authority and in `?host=`).
    """
    match = _POSTGRES.match(url)
    if not match:
        return url
    rest = url[match.end():]
    authority, slash, tail = _split_authority(rest)
    userinfo, _, hostlist = authority.rpartition("@")
    if "," not in hostlist:
        return url  # one host (or none): SQLAlchemy reads libpq's form as it is
    path, _, query = tail.partition("?")
    params = parse_qsl(query, keep_blank_values=True)
    if any(key in ("host", "hostaddr", "port") for key, _ in params):
        raise ValueError("give the hosts either as host1:port1,host2:port2 or in ?host=, "
                         "not both")
    hosts, ports = zip(*(_host_port(entry) for entry in hostlist.split(",")), strict=True)
    extra: dict[str, str | list[str]] = {"host": ",".join(hosts)}
    if any(ports):
        extra["port"] = ",".join(ports)
    user, has_password, password = userinfo.partition(":")
    return URL.create(
        "postgresql" + (match.group(2) or ""),
        username=unquote(user) or None,
        password=unquote(password) if has_password else None,
        database=unquote(path) if slash and path else None,
        query={**_grouped(params), **extra},
    ).render_as_string(hide_password=False)


def host_count(url: str) -> int:
    """How many database hosts a (normalized) URL names; 0 for SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return 0
    hosts = parsed.query.get("host")
    if hosts is None:
        return 1
    entries = [hosts] if isinstance(hosts, str) else list(hosts)
    return sum(len(entry.split(",")) for entry in entries)


def primary_first(params: dict[str, Any], host: str, port: int | str) -> dict[str, Any]:
    """The driver's connect() keywords with `host:port` moved to the front of a multi-host
    list (libpq tries the hosts in order): a new connection then goes first to the primary
    the last one found, rather than through a dead or frozen first host's connect_timeout
    after every failover. Unchanged when that host is not in the list."""
    hosts = str(params.get("host") or "").split(",")
    if len(hosts) < 2:
        return params
    ports = [p or "5432" for p in str(params.get("port") or "").split(",")]
    pairs = list(zip(hosts, ports * len(hosts) if len(ports) == 1 else ports, strict=True))
    if (host, str(port)) not in pairs:
        return params
    pairs.remove((host, str(port)))
    pairs.insert(0, (host, str(port)))
    return {**params, "host": ",".join(h for h, _ in pairs),
            "port": ",".join(p for _, p in pairs)}


def displayed(url: str | None) -> str:
    """``url`` with its password replaced by ***, parseable or not, its query unescaped (for
    people: logs and errors)."""
    if not url:
        return repr(url)
    try:
        return unquote(make_url(url).render_as_string(hide_password=True))
    except Exception:  # noqa: BLE001 - any URL SQLAlchemy refuses: mask by pattern instead
        return _PASSWORD.sub(r"\1***@", url)


def _split_authority(rest: str) -> tuple[str, str, str]:
    """(authority, '/' or '', path and query) of what follows `scheme://`."""
    end = len(rest)
    for sep in "/?":
        found = rest.find(sep)
        if found != -1:
            end = min(end, found)
    authority, tail = rest[:end], rest[end:]
    if tail.startswith("/"):
        return authority, "/", tail[1:]
    return authority, "", tail


def _host_port(entry: str) -> tuple[str, str]:
    """One `host[:port]` (or `[v6]:port`) of libpq's host list, percent-decoded."""
    match = _IPV6_HOST.match(entry) or _HOST.match(entry)
    if not match:
        raise ValueError(f"cannot read the host {entry!r} of the database URL")
    host, port = unquote(match.group(1)), match.group(2) or ""
    if not host:
        raise ValueError("an empty host in the database URL's host list")
    if port and not 0 < int(port) < 65536:
        raise ValueError(f"the port {port} of the database URL is out of range")
    return host, port


def _grouped(params: list[tuple[str, str]]) -> dict[str, str | list[str]]:
    """Query pairs as URL.create takes them: a repeated key becomes a list."""
    grouped: dict[str, str | list[str]] = {}
    for key, value in params:
        if key in grouped:
            previous = grouped[key]
            grouped[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            grouped[key] = value
    return grouped
