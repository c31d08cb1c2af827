"""Check requests against the providers' published API definitions in ../shared/provider-specs.

- SendGrid and Resend (OpenAPI 3.1) go through openapi-core as they are: path, method,
  parameters, security scheme and JSON body.
- Postmark's file is Swagger 2.0, which openapi-core does not read: the operations are converted
  to OpenAPI 3 here (body parameter -> requestBody, ``#/definitions`` -> components), then
  checked the same way.
- Mailgun's send is multipart/form-data with families of fields (``h:<Header>``, ``v:<var>``
  written in the file as the placeholders ``h:X-My-Header`` / ``v:my-var``): the form is parsed
  here (repeated fields -> lists for array properties) and checked with jsonschema against the
  published body schema, each family member against its placeholder's schema.

Known quirks of the files, worked around here and said in the README: SendGrid's message-level
``custom_args`` is typed string (dripmail only sends it per personalization, as an object);
Resend has no ``maxItems`` on batch (the fake enforces 100 itself) and no error schemas;
Postmark's file predates ``MessageStream`` and ``Metadata`` (extra fields still validate).
"""

from __future__ import annotations

import copy
import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SPECS = Path(
    os.environ.get(
        "DRIPMAIL_PROVIDER_SPECS",
        str(Path(__file__).resolve().parents[3] / "shared" / "provider-specs"),
    )
)
if not SPECS.is_dir():  # worktrees live one level deeper than the main checkout
    SPECS = Path("/work/shared/provider-specs")

HOSTS = {
    "postmark": "https://api.postmarkapp.com",
    "sendgrid": "https://api.sendgrid.com",
    "resend": "https://api.resend.com",
}


def _rewrite_refs(node: Any) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                out[key] = value.replace("#/definitions/", "#/components/schemas/")
            else:
                out[key] = _rewrite_refs(value)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v) for v in node]
    return node


def swagger2_to_openapi3(spec: dict, host: str) -> dict:
    """Just enough of a Swagger 2.0 -> OpenAPI 3.0 conversion to validate requests."""
    paths: dict = {}
    for path, item in spec.get("paths", {}).items():
        new_item = {}
        for method, op in item.items():
            if method not in ("get", "post", "put", "delete", "patch"):
                continue
            params, body = [], None
            for param in op.get("parameters", []):
                if param.get("in") == "body":
                    body = {
                        "required": bool(param.get("required", False)),
                        "content": {"application/json": {"schema": _rewrite_refs(param["schema"])}},
                    }
                    continue
                schema = {k: param[k] for k in ("type", "format", "enum", "items") if k in param}
                params.append(
                    {
                        "name": param["name"],
                        "in": param["in"],
                        "required": bool(param.get("required", False)),
                        "schema": schema,
                    }
                )
            new_op: dict = {"parameters": params, "responses": {"200": {"description": "OK"}}}
            if body:
                new_op["requestBody"] = body
            new_item[method] = new_op
        paths[path] = new_item
    return {
        "openapi": "3.0.3",
        "info": {"title": spec.get("info", {}).get("title", "converted"), "version": "1"},
        "servers": [{"url": host}],
        "paths": paths,
        "components": {"schemas": _rewrite_refs(spec.get("definitions", {}))},
    }


def _trusted():
    from openapi_core import Config

    # The providers' own files, fixed in the repo: requests are checked against them, the
    # files themselves need no check on every start (that took 80% of a worker's first start).
    return Config(spec_validator_cls=None)


def _load_yaml(text: str) -> Any:
    """Safe YAML loading with libyaml's C parser when PyYAML has it (the specs are large: the
    pure-Python parser took most of a test worker's first fake-provider start)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(text, Loader=loader)


@functools.cache
def _openapi(provider: str):
    from openapi_core import OpenAPI

    if provider == "postmark":
        raw = _load_yaml((SPECS / "postmark" / "server-api.swagger.yaml").read_text())
        spec = swagger2_to_openapi3(raw, HOSTS["postmark"])
        return OpenAPI.from_dict(spec, config=_trusted())
    if provider == "sendgrid":
        merged: dict | None = None
        for name in ("tsg_mail_v3.yaml", "tsg_scheduled_sends_v3.yaml"):
            part = _load_yaml((SPECS / "sendgrid" / name).read_text())
            if merged is None:
                merged = copy.deepcopy(part)
            else:
                merged["paths"].update(part["paths"])
                for kind, values in part.get("components", {}).items():
                    merged.setdefault("components", {}).setdefault(kind, {}).update(values)
        return OpenAPI.from_dict(merged, config=_trusted())
    if provider == "resend":
        spec = _load_yaml((SPECS / "resend" / "resend.yaml").read_text())
        return OpenAPI.from_dict(spec, config=_trusted())
    raise KeyError(provider)


@functools.cache
def _mailgun() -> dict:
    return _load_yaml((SPECS / "mailgun" / "openapi.yaml").read_text())


def preload(providers: tuple[str, ...] = ("postmark", "sendgrid", "resend", "mailgun")) -> None:
    """Parse the definitions up front (the Mailgun file is large)."""
    for provider in providers:
        if provider == "mailgun":
            _mailgun()
        else:
            _openapi(provider)


@dataclass
class _Request:
    """The request shape openapi-core's protocol asks for."""

    host_url: str
    path: str
    method: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes | None
    content_type: str
    parameters: Any = field(init=False)

    def __post_init__(self) -> None:
        from openapi_core.datatypes import RequestParameters
        from werkzeug.datastructures import Headers, ImmutableMultiDict

        self.parameters = RequestParameters(
            query=ImmutableMultiDict([(k, v) for k, vs in self.query.items() for v in vs]),
            header=Headers(list(self.headers.items())),
            cookie=ImmutableMultiDict(),
            path={},
        )

    @property
    def full_url_pattern(self) -> str:
        return self.host_url + self.path


def _describe(exc: Exception) -> str:
    parts = [f"{type(exc).__name__}: {exc}"]
    cause = exc.__cause__
    while cause is not None and len(parts) < 4:
        parts.append(str(cause)[:500])
        cause = cause.__cause__
    return " | ".join(parts)[:1500]


# Documented calls that are not in the copied files: served unvalidated, and said so here.
# GET /v3/scopes is SendGrid's "what may this key do" call (API Keys > scopes), which
# `providers check` uses because it works for a key restricted to Mail Send.
NOT_IN_FILES = {("sendgrid", "GET", "/v3/scopes")}


def validate(
    provider: str,
    method: str,
    path: str,
    query: dict[str, list[str]],
    headers: dict[str, str],
    body: bytes,
    form: dict[str, list[str]] | None = None,
) -> str | None:
    """None when the request matches the provider's published definition, else why not."""
    if (provider, method.upper(), path) in NOT_IN_FILES:
        return None
    if provider == "mailgun":
        return _validate_mailgun(method, path, headers, form)
    request = _Request(
        HOSTS[provider],
        path,
        method.lower(),
        query,
        headers,
        body or None,
        headers.get("Content-Type", headers.get("content-type", "application/json")).split(";")[0],
    )
    try:
        _openapi(provider).validate_request(request)
    except Exception as exc:  # openapi-core raises a family of validation errors
        return _describe(exc)
    return None


@functools.cache
def _cached_validator(schema_json: str) -> Any:
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _check(instance: Any, schema: dict) -> None:
    """`jsonschema.validate(instance, schema)` (same validator, same best-matching error) with
    the validator made once per schema: `validate` checks the schema and builds a validator on
    every call, which for a batch of a thousand Mailgun form fields cost more than the fake's
    whole answer."""
    validator = _cached_validator(json.dumps(schema, sort_keys=True))
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if error is not None:
        raise error


def _validate_mailgun(
    method: str, path: str, headers: dict[str, str], form: dict[str, list[str]] | None
) -> str | None:
    spec = _mailgun()
    lower = {k.lower(): v for k, v in headers.items()}
    if not lower.get("authorization", "").startswith("Basic "):
        return "security: basicAuth (api:KEY) missing"
    parts = path.strip("/").split("/")
    if method == "GET" and len(parts) == 3 and parts[:2] == ["v3", "domains"]:
        return None if "/v3/domains/{name}" in spec["paths"] else "no GET /v3/domains/{name}"
    if not (method == "POST" and len(parts) == 3 and parts[0] == "v3" and parts[2] == "messages"):
        return f"{method} {path} is not an operation dripmail expects to call"
    op = spec["paths"]["/v3/{domain_name}/messages"]["post"]
    ref = op["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    schema = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    if not lower.get("content-type", "").startswith("multipart/form-data"):
        return "body must be multipart/form-data"
    props = schema["properties"]
    instance: dict[str, Any] = {}
    for name, values in (form or {}).items():
        if name.startswith("h:"):
            target = props["h:X-My-Header"]
        elif name.startswith("v:"):
            target = props["v:my-var"]
        elif name in props:
            target = props[name]
        else:
            return f"unknown form field {name!r}"
        value: Any = values if target.get("type") == "array" else values[-1]
        if target.get("type") != "array" and len(values) > 1:
            return f"form field {name!r} given {len(values)} times"
        try:
            _check(value, target)
        except jsonschema.ValidationError as exc:
            return f"{name}: {exc.message}"
        instance[name] = value
    plain = {k: v for k, v in instance.items() if not k.startswith(("h:", "v:"))}
    try:
        _check(plain, {**schema, "properties": props})
    except jsonschema.ValidationError as exc:
        return f"body: {exc.message}"
    if "recipient-variables" in instance:
        try:
            json.loads(instance["recipient-variables"])
        except ValueError:
            return "recipient-variables is not JSON"
    return None
