"""Reading request bodies (an HTML form or a JSON object) as one flat dict of strings."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

from starlette.requests import Request

from dripmail.errors import InputError

MAX_FIELDS = 30


def wants_json(request: Request) -> bool:
    """True when the client sent JSON or asked for it (then it gets JSON answers)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    accept = request.headers.get("accept", "").lower()
    return content_type == "application/json" or (
        "application/json" in accept and "text/html" not in accept
    )


async def read_fields(request: Request) -> dict[str, str]:
    """The submitted fields; InputError (answer 400) when the body is neither a form nor JSON.

    The body size is capped by the app (413 beyond it). A repeated form field keeps its first
    value; JSON values must be strings, numbers, booleans or null (nothing is guessed from a
    list or an object).
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    if content_type == "application/json":
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise InputError("the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise InputError('the JSON body must be an object like {"email": "you@example.com"}')
        if len(data) > MAX_FIELDS:
            raise InputError("too many fields")
        fields: dict[str, str] = {}
        for key, value in data.items():
            if value is None:
                fields[str(key)] = ""
            elif isinstance(value, bool):
                fields[str(key)] = "on" if value else ""
            elif isinstance(value, str | int | float):
                fields[str(key)] = str(value)
            else:
                raise InputError(f"the JSON field {key!r} must be a string")
        return fields
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=0, max_fields=MAX_FIELDS)
        except Exception:  # python-multipart raises several unrelated classes: all "malformed"
            raise InputError("the form data could not be read") from None
        out: dict[str, str] = {}
        for key, value in form.multi_items():
            if isinstance(value, str):
                out.setdefault(key, value)
        return out
    if content_type in ("application/x-www-form-urlencoded", ""):
        try:
            text = body.decode("utf-8")
            pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
        except (UnicodeDecodeError, ValueError):
            raise InputError("the form data could not be read") from None
        if len(pairs) > MAX_FIELDS:
            raise InputError("too many fields")
        out = {}
        for key, value in pairs:
            out.setdefault(key, value)
        return out
    raise InputError(f"unsupported content type {content_type!r}: send a form or JSON")
