"""Admin API route for call detail records.

GET /api/cdr?since=T[&until=T][&user=U][&limit=N][&format=json|csv]

Calls that started in [since, until), oldest first.  Times are epoch seconds or ISO 8601
(`cdr.parse_time`; without an offset, the server's local time); `until` defaults to now;
`user` keeps the calls made by that user (what the hotel PMS bills per extension).
`json` (default): `{"calls": [CallRecord...], "count": n}`, times as epoch seconds.
`csv`: a header row and one line per call, times in ISO 8601 with the server's offset, the
legs and `extra` as JSON in their own columns.

The answer is streamed in pages: a month's export neither sits whole in memory nor stops
the event loop (and the calls it serves) for longer than one page's query.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime

from aiohttp import web

from .cdr import CallRecord, CdrWriter, parse_time

PAGE = 500  # calls per query while streaming
CSV_COLUMNS = (
    "call_uuid",
    "linked_to",
    "caller",
    "callee",
    "user",
    "callee_user",
    "did",
    "trunk",
    "rule",
    "flow",
    "flow_outcome",
    "started_at",
    "answered_at",
    "ended_at",
    "duration_s",
    "billable_s",
    "disposition",
    "hangup_cause",
    "hangup_side",
    "legs",
    "extra",
)
# A cell a spreadsheet would run as a formula (CSV injection: callers choose their own
# From): =, @, tab, CR, or + and - unless a dialled number follows (+34913346140 stays).
_FORMULA_RE = re.compile(r"[=@\t\r]|[+-](?![0-9*# ]*$)")


def _error(status: type[web.HTTPException], message: str) -> web.HTTPException:
    return status(text=json.dumps({"error": message}), content_type="application/json")


def iso_time(ts: float | None) -> str:
    """ISO 8601 with the server's UTC offset, to the millisecond; "" for no time."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="milliseconds")


def _cell(value: str | None) -> str:
    if value is None:
        return ""
    return f"'{value}" if _FORMULA_RE.match(value) else value


def csv_row(record: CallRecord) -> list[str]:
    """One CSV line's cells, in CSV_COLUMNS order."""
    return [
        _cell(record.call_uuid),
        _cell(record.linked_to),
        _cell(record.caller),
        _cell(record.callee),
        _cell(record.user),
        _cell(record.callee_user),
        _cell(record.did),
        _cell(record.trunk),
        _cell(record.rule),
        _cell(record.flow),
        _cell(record.flow_outcome),
        iso_time(record.started_at),
        iso_time(record.answered_at),
        iso_time(record.ended_at),
        f"{record.duration_s:.3f}",
        f"{record.billable_s:.3f}",
        record.disposition,
        _cell(record.hangup_cause),
        record.hangup_side,
        json.dumps([asdict(leg) for leg in record.legs], separators=(",", ":")),
        json.dumps(record.extra, separators=(",", ":"), default=str),
    ]


def _csv_text(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue().encode()


def _query(request: web.Request) -> tuple[float, float, str | None, int | None, str]:
    """since, until, user, limit and format, checked before the answer starts."""
    query = request.query
    if not query.get("since", "").strip():
        raise _error(web.HTTPBadRequest, "since is required (ISO 8601 or epoch seconds)")
    try:
        since = parse_time(query["since"])
        until = parse_time(query["until"]) if query.get("until", "").strip() else time.time()
    except ValueError as exc:
        raise _error(web.HTTPBadRequest, str(exc)) from None
    if until <= since:
        raise _error(web.HTTPBadRequest, "until must be after since")
    limit = None
    if query.get("limit"):
        if not query["limit"].isdigit() or int(query["limit"]) < 1:
            raise _error(web.HTTPBadRequest, "limit must be a positive whole number")
        limit = int(query["limit"])
    fmt = query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise _error(web.HTTPBadRequest, "format must be json or csv")
    return since, until, query.get("user") or None, limit, fmt


def add_cdr_routes(app: web.Application, writer_provider: Callable[[], CdrWriter | None]) -> None:
    """Register GET /api/cdr; `writer_provider` gives None while CDRs are off."""

    async def get_cdr(request: web.Request) -> web.StreamResponse:
        since, until, user, limit, fmt = _query(request)
        writer = writer_provider()
        if writer is None:
            raise _error(web.HTTPServiceUnavailable, "no call detail records here (b2bua.cdr is false or the B2BUA is not running)")
        content_type = "text/csv; charset=utf-8" if fmt == "csv" else "application/json"
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        await response.write(_csv_text([list(CSV_COLUMNS)]) if fmt == "csv" else b'{"calls": [')
        count = 0
        after: tuple[float, str] | None = None
        while limit is None or count < limit:
            size = PAGE if limit is None else min(PAGE, limit - count)
            page = writer.query(since, until, limit=size, user=user, after=after)
            if fmt == "csv":
                chunk = _csv_text([csv_row(r) for r in page])
            else:
                chunk = ", ".join(json.dumps(r.to_json(), default=str) for r in page).encode()
                chunk = (b", " if count and page else b"") + chunk
            count += len(page)
            await response.write(chunk)  # lets the loop run between pages
            if len(page) < size:
                break
            after = (page[-1].started_at, page[-1].call_uuid)
        if fmt == "json":
            await response.write(f'], "count": {count}}}'.encode())
        await response.write_eof()
        return response

    app.router.add_get("/api/cdr", get_cdr)
