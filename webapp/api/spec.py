"""Declaring an API route, and the OpenAPI document generated from the declarations.

`endpoint(rule, methods, query=..., json=..., ok=..., ...)` registers a view on the API
blueprint (with and without the trailing slash), checks the caller, validates the query,
headers and body against the pydantic models of schemas.py (every bad field named at once),
checks the response against its model, and puts all of it in /api/v1/openapi.json — spectree
generates the document from the same models, so the document cannot drift from the server.
The interactive docs (/api/docs) are Swagger UI from static/vendor/swagger-ui/.
"""
import copy
from functools import wraps

from flask import Blueprint, current_app, jsonify, redirect, render_template, request
from spectree import Response, SecurityScheme, SecuritySchemeData, SpecTree

from ..automation.config_schema import _FRIENDLY as CONFIG_FRIENDLY
from ..automation.config_schema import pydantic_errors
from . import bp
from .errors import ApiError
from .schemas import Error

TITLE = "Automation Console API"
DESCRIPTION = (
    "Every response is `{\"success\": true, \"data\": ...}` or `{\"success\": false, \"error\": \"...\"}`; "
    "when fields are at fault, `errors` maps each of them to its message. Authenticate with "
    "`Authorization: Bearer <token>` (from `POST /api/v1/auth/token/`) or a browser session (state "
    "changes then need the `X-CSRFToken` header). Every route also answers without its trailing slash.")

class _LazySpecTree(SpecTree):
    """SpecTree that makes the models' JSON schemas when the document is first asked for, not
    when each route is declared. Validation never reads them; building them at import cost every
    process (web, each worker, the scheduler, each CLI call) ~0.4 s of CPU for a document that
    only /api/v1/openapi.json serves."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pending_models = []

    def _add_model(self, model, mode="validation"):
        self._pending_models.append((model, mode))
        return self.naming_strategy(model)

    def _generate_spec(self):
        pending, self._pending_models = self._pending_models, []
        for model, mode in pending:  # in declaration order, as spectree would have
            super()._add_model(model, mode)
        return super()._generate_spec()


spec = _LazySpecTree(
    "flask", mode="strict", title=TITLE, version="1.1.0", description=DESCRIPTION, annotations=False,
    naming_strategy=lambda model: model.__name__, nested_naming_strategy=lambda _parent, child: child,
    validation_error_status=400, validation_error_model=Error,
    security_schemes=[SecurityScheme(name="bearer", data=SecuritySchemeData(type="http", scheme="bearer"))],
    security={"bearer": []},
)
FRIENDLY = {"ConfigUpdate": CONFIG_FRIENDLY}  # model title -> {field: message} in our words
_EXTRA = {}  # (path, method) -> changes to the generated operation (see `doc`)

# Answers every route can give, documented once here.
COMMON = {401: "Not authenticated (missing, unknown or revoked token)", 405: "Method not allowed",
          414: "URL too long (more than MAX_URL_LENGTH characters)",
          431: "Request headers too large (more than MAX_HEADER_BYTES)",
          429: "Too many requests (API_RATE_LIMIT per token; Retry-After says when)",
          500: "Unexpected error (the message carries a request id; no stack trace)"}
BODY = {413: "Request body too large", 415: "Wrong Content-Type"}


def _before(req, resp, req_validation_error, instance, model_adapter=None):
    """After spectree parsed the request, before the view: bad input answers in our envelope,
    naming every field at fault. The order callers see: query and headers first, then the body's
    form (content type, well-formed JSON, an object), then the body's fields."""
    title = getattr(req_validation_error, "title", None)
    body = request.environ.get("automation.api_body")
    if req_validation_error is not None and (body is None or title in body["params"]):
        raise ApiError(status=400, errors=pydantic_errors(req_validation_error))
    if body is not None:
        _check_json_body(body["required"], body["form"])
    if req_validation_error is not None:
        raise ApiError(status=400, errors=pydantic_errors(req_validation_error, FRIENDLY.get(title)))


def _after(req, resp, resp_validation_error, instance, model_adapter=None):
    if resp_validation_error is not None:
        # The server tried to answer something its document does not describe: a bug here.
        current_app.logger.error("response of %s does not match its schema: %s", req.path, resp_validation_error)
        # Tests fail on it; in production the answer still goes out (the change it reports has
        # been committed: a 500 would make a client retry an action that succeeded).
        if current_app.testing:
            raise RuntimeError(f"response of {req.path} does not match its schema")


def endpoint(rule, methods, *, ok=None, status=200, query=None, json=None, form=None, headers=None,
             errors=None, auth=True, body_required=True, tags=(), doc=None, extra_ok=None, links=None,
             body_doc=None):
    """Register a view under /api/v1`rule` (a trailing slash is optional for callers).

    ok/status: the data model of the success answer and its status; extra_ok: {status: (model,
    description)} for other successes; errors: {status: description} beyond the common ones;
    json/form/query/headers: request models; body_required: False for optional bodies;
    doc: a dict merged into the generated operation (for bodies spectree cannot describe);
    body_doc: a JSON body model documented but validated by the view's service (which has its
    own field messages); `body_required` says whether it must be sent.
    links: {name: (operation id, {parameter: runtime expression})} from the success answer to the
    routes it enables (the operation id of a route is its view's name; schemathesis' stateful
    phase follows them).
    """
    from .context import api_auth

    def deco(fn):
        nonlocal doc
        if body_doc is not None:
            doc = {**(doc or {}), "requestBody": {"required": body_required, "content": {"application/json": {
                "schema": body_doc.model_json_schema(ref_template="#/components/schemas/{model}")}}}}
        codes = {f"HTTP_{status}": ok} if ok is not None else {}
        for code, (model, desc) in (extra_ok or {}).items():
            codes[f"HTTP_{code}"] = (model, desc)
        documented = dict(COMMON if auth else {k: v for k, v in COMMON.items() if k != 401})
        if auth and set(methods) - {"GET", "HEAD"}:
            documented[403] = "Your role (or the token's read-only scope) does not allow this change"
        if json is not None or form is not None or (doc or {}).get("requestBody"):
            documented.update(BODY)
        if any(m is not None for m in (query, json, form, headers, body_doc)):
            documented[400] = "Invalid input: `errors` names every field at fault"
        documented.update(errors or {})
        for code, desc in documented.items():
            codes[f"HTTP_{code}"] = (Error, desc)
        validated = spec.validate(query=query, json=json, form=form, headers=headers, resp=Response(**codes),
                                  tags=tags, before=_before, after=_after, operation_id=fn.__name__,
                                  security=None if auth else {})(fn)
        view = validated
        if json is not None:
            view = _body_rules(view, body_required, form is not None,
                               {m.__name__ for m in (query, headers) if m is not None})
        if auth:
            view = api_auth(view)
        view.__name__ = fn.__name__
        bp.add_url_rule(rule.rstrip("/") + "/", fn.__name__, view, methods=methods, strict_slashes=False)
        path = bp.url_prefix + rule.rstrip("/") + "/"
        for m in methods:
            extra = _EXTRA.setdefault((_doc_path(path), m.lower()), {})
            if json is not None and not body_required:
                extra.setdefault("requestBody", {})["required"] = False
            if doc:
                _merge(extra, doc)
            if links:
                extra.setdefault("responses", {}).setdefault(str(status), {})["links"] = {
                    name: {"operationId": op_id, "parameters": params} for name, (op_id, params) in links.items()}
        return fn
    return deco


def _check_json_body(required, form):
    """The body checks spectree leaves to us: content type, well-formed JSON, an object."""
    from .context import json_body
    if request.method in ("POST", "PUT", "PATCH"):
        has_body = bool(request.content_length) or bool(request.get_data(cache=True))
        form_body = request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data")
        if (has_body or required) and not (form and form_body):  # form bodies: the form model
            json_body()


def _body_rules(view, required, form, params):
    """Tell `_before` what body this route takes (it runs inside spectree's validation)."""
    @wraps(view)
    def inner(*a, **kw):
        request.environ["automation.api_body"] = {"required": required, "form": form, "params": params}
        return view(*a, **kw)
    return inner


def _doc_path(path):
    import re
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", path)


def _merge(into, extra):
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = copy.deepcopy(v)


def _drop_titles(node):
    # pydantic titles every property after its name ("Site Id"): noise for readers of the doc.
    if isinstance(node, dict):
        for key in ("properties",):
            for prop in (node.get(key) or {}).values():
                if isinstance(prop, dict):
                    prop.pop("title", None)
        if node.get("in") in ("query", "header") and isinstance(node.get("schema"), dict):
            node["schema"].pop("title", None)
        for v in node.values():
            _drop_titles(v)
    elif isinstance(node, list):
        for v in node:
            _drop_titles(v)


def _one_body_type(op):
    """Document one media type per request body: JSON. The server also takes the same fields as a
    form (and the keyword import a CSV), but client generators given two media types for one body
    emit code that does not import (openapi-python-client: `NameError: Unset`) or that sends JSON
    as multipart; the alternatives are named in the operation's description instead."""
    content = (op.get("requestBody") or {}).get("content") or {}
    if "application/json" not in content or len(content) == 1:
        return
    for k in [k for k in content if k != "application/json"]:
        del content[k]
    note = "The same fields are also accepted as a form (application/x-www-form-urlencoded or multipart/form-data)."
    op["description"] = (op.get("description", "") + "\n\n" + note).strip()


def _drop_null_defaults(node):
    # An absent optional value is "no default", not `default: null` (which an `integer` schema
    # cannot hold: generators and validators trip on it).
    if isinstance(node, dict):
        if "default" in node and node["default"] is None:
            del node["default"]
        for v in node.values():
            _drop_null_defaults(v)
    elif isinstance(node, list):
        for v in node:
            _drop_null_defaults(v)


NO_NUL = r"^[^\x00]*$"


def _no_nul_in_requests(doc):
    """Text the server takes never holds a NUL (webapp/validation.py refuses it everywhere): say so
    on every string a request can carry that has no stricter pattern of its own."""
    components = doc.get("components", {}).get("schemas", {})
    seen = set()

    def walk(node):
        if isinstance(node, list):
            for v in node:
                walk(v)
            return
        if not isinstance(node, dict):
            return
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            name = ref.rsplit("/", 1)[1]
            if name not in seen and name in components:
                seen.add(name)
                walk(components[name])
            return
        if node.get("type") == "string" and "pattern" not in node and "enum" not in node and "format" not in node:
            node["pattern"] = NO_NUL
        for key, v in node.items():
            if key not in ("example", "examples", "default", "const", "enum"):
                walk(v)

    for path_item in doc["paths"].values():
        for op in path_item.values():
            for param in op.get("parameters", []):
                walk(param.get("schema"))
            for media in (op.get("requestBody") or {}).get("content", {}).values():
                walk(media.get("schema"))


def document(app):
    """The OpenAPI document (built once per app)."""
    cached = app.extensions.get("openapi_document")
    if cached is None:
        # spectree builds its document once per process (a second build loses the nested
        # models); every app of the process has the same API routes.
        spec.app = app
        spec.backend.app = app
        with app.app_context():
            cached = copy.deepcopy(spec.spec)
        for (path, method), extra in _EXTRA.items():
            op = cached["paths"].get(path, {}).get(method)
            if op is not None:
                _merge(op, extra)
        for path_item in cached["paths"].values():
            for op in path_item.values():
                # Bodies and answers are JSON objects or nothing: no other media types.
                for resp in op.get("responses", {}).values():
                    resp.get("content", {}).pop("text/plain", None)
                _one_body_type(op)
        _drop_titles(cached)
        _drop_null_defaults(cached)
        _no_nul_in_requests(cached)
        app.extensions["openapi_document"] = cached
    return cached


docs_bp = Blueprint("api_docs", __name__)


@bp.get("/openapi.json")
def openapi_json():
    return jsonify(document(current_app._get_current_object()))


@docs_bp.get("/api/docs")
@docs_bp.get("/api/docs/")
def docs():
    return render_template("api_docs.html", spec_url="/api/v1/openapi.json")


@bp.get("/docs")
@bp.get("/docs/")
def old_docs():
    return redirect("/api/docs", 301)
