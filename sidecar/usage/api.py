"""``GET /v1/gateway/usage`` (admin keys: everyone's) and ``/v1/gateway/usage/me`` (any
key: its own rows).

Query: ``since`` and ``until`` (``YYYY-MM-DD``, UTC, inclusive; default the last 30
days up to today; at most ``MAX_DAYS`` apart) and ``group_by`` (comma-separated, from
``key``, ``model``, ``day``, ``user``; default ``key,model,day``). The answer is
``{"data": [{<each group_by field>, "requests", "prompt_tokens", "completion_tokens",
"errors"}]}`` from the daily roll-ups; a row written in the last second may not be in it
yet. Anything else in the query, a bad date or a range too wide is a 400.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from aiohttp import web
from multidict import MultiMapping

from ..auth import caller
from ..errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from ..typedefs import USAGE
from .store import DIMENSIONS

MAX_DAYS = 366
DEFAULT_DAYS = 30
MAX_ROWS = 10_000
DEFAULT_GROUP_BY = ("key", "model", "day")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_PARAMS = frozenset({"since", "until", "group_by"})
_REPORTED = ("requests", "prompt_tokens", "completion_tokens", "errors")


@dataclass(frozen=True)
class UsageQuery:
    since: str
    until: str
    group_by: tuple[str, ...]


def parse_query(query: MultiMapping[str], allowed: frozenset[str] = _PARAMS) -> UsageQuery:
    """The checked query parameters; ``InvalidRequest`` (400) naming the bad one."""
    for name in set(query.keys()):
        if name not in allowed:
            raise InvalidRequest(
                f"unknown query parameter (allowed: {', '.join(sorted(allowed))})",
                param=name if len(name) <= 32 and name.isidentifier() else None,
            )
        if len(query.getall(name)) > 1:
            raise InvalidRequest(f"'{name}' is given twice", param=name)
    today = dt.datetime.now(dt.UTC).date()
    until = _date(query, "until") or today
    try:
        since = _date(query, "since") or until - dt.timedelta(days=DEFAULT_DAYS - 1)
    except OverflowError:  # until in the first days of year 1
        raise InvalidRequest("'until' is too early; give 'since' too", param="until") from None
    if since > until:
        raise InvalidRequest("'since' is after 'until'", param="since")
    if (until - since).days >= MAX_DAYS:
        raise InvalidRequest(f"ask for at most {MAX_DAYS} days at once", param="since")
    return UsageQuery(since.isoformat(), until.isoformat(), _group_by(query.get("group_by")))


def _date(query: MultiMapping[str], name: str) -> dt.date | None:
    text = query.get(name)
    if text is None:
        return None
    if not _DATE.match(text):
        raise InvalidRequest(f"'{name}' must be a date, YYYY-MM-DD", param=name)
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"'{name}' is not a calendar date", param=name) from None


def _group_by(text: str | None) -> tuple[str, ...]:
    if text is None:
        return DEFAULT_GROUP_BY
    names = tuple(name.strip() for name in text.split(",")) if text.strip() else ()
    if not names or len(names) > len(DIMENSIONS):
        raise InvalidRequest(
            f"'group_by' lists one or more of {', '.join(DIMENSIONS)}", param="group_by"
        )
    for name in names:
        if name not in DIMENSIONS:
            raise InvalidRequest(
                f"'group_by' may name only {', '.join(DIMENSIONS)}", param="group_by"
            )
    if len(set(names)) != len(names):
        raise InvalidRequest("'group_by' names a field twice", param="group_by")
    return names


async def usage(request: web.Request) -> web.Response:
    """Every key's usage: admin keys only."""
    _, admin = caller(request)
    if not admin:
        raise Forbidden(
            "Every key's usage needs an admin key (GATEWAY_ADMIN_TOKENS);"
            " GET /v1/gateway/usage/me shows this key's own",
            code="admin_required",
        )
    return await _answer(request, key=None)


async def usage_me(request: web.Request) -> web.Response:
    """The calling key's own usage."""
    name, _ = caller(request)
    if name is None:  # the bearer middleware stops this first; never every key's rows
        raise Unauthorized("Missing bearer token")
    return await _answer(request, key=name)


async def _answer(request: web.Request, key: str | None) -> web.Response:
    ledger = request.app.get(USAGE)
    if ledger is None:
        raise NotFound("The usage ledger is off (GATEWAY_USAGE_ENABLED)", code="usage_off")
    query = parse_query(request.query)
    rows = await ledger.totals(
        query.since, query.until, query.group_by, key=key, limit=MAX_ROWS + 1
    )
    if len(rows) > MAX_ROWS:
        raise InvalidRequest(
            f"more than {MAX_ROWS} rows; ask for fewer days or group by fewer fields",
            param="group_by",
            code="too_many_rows",
        )
    data = [
        {**{name: row[name] for name in query.group_by}, **{n: row[n] for n in _REPORTED}}
        for row in rows
    ]
    return web.json_response({"data": data})
