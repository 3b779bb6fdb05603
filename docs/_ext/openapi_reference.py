"""The ``openapi-reference`` directive: the control plane's routes, rendered
from its own OpenAPI document.

It imports the FastAPI app (the first of the ``openapi_apps`` setting that
imports, ``module:attribute``), asks it for ``app.openapi()`` and writes one
section per path and method: the summary and description, the parameters,
the request body's fields and the responses. Nothing is copied by hand, so
the page says what the running control plane says at ``/openapi.json``.
"""

from __future__ import annotations

import importlib

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

METHODS = ("get", "put", "post", "delete", "patch")


def load_app(candidates: list[str]):
    errors = []
    for spec in candidates:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            errors.append(f"{spec}: {exc}")
            continue
        app = getattr(module, attr, None)
        if app is not None and hasattr(app, "openapi"):
            return app
        errors.append(f"{spec}: no FastAPI app named {attr!r}")
    # A package that moved its app into a module of another name: the one
    # FastAPI app among its modules.
    for spec in candidates:
        if (app := _find_in_package(spec.partition(":")[0])) is not None:
            return app
    raise RuntimeError("no control plane app found: " + "; ".join(errors))


def _find_in_package(package_name: str):
    import pkgutil

    try:
        package = importlib.import_module(package_name)
    except ImportError:
        return None
    found = []
    for info in pkgutil.walk_packages(getattr(package, "__path__", []), package_name + "."):
        try:
            module = importlib.import_module(info.name)
        except ImportError:
            continue
        found += [v for v in vars(module).values() if type(v).__name__ == "FastAPI" and hasattr(v, "openapi")]
    unique = {id(app): app for app in found}
    return next(iter(unique.values())) if len(unique) == 1 else None


def _ref_name(schema: dict) -> str | None:
    ref = schema.get("$ref")
    return ref.rsplit("/", 1)[-1] if ref else None


def _type(schema: dict) -> str:
    if name := _ref_name(schema):
        return name
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    return kind


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _rst_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for row in [header, *rows]:
        first, *rest = row
        lines.append(f"   * - {first or ' '}")
        lines.extend(f"     - {cell or ' '}" for cell in rest)
    return lines + [""]


def render(document: dict, models_title: str = "Models") -> list[str]:
    components = document.get("components", {}).get("schemas", {})
    out: list[str] = []
    for path, operations in document["paths"].items():
        for method in METHODS:
            op = operations.get(method)
            if op is None:
                continue
            title = f"{method.upper()} {path}"
            out += [title, "-" * len(title), ""]
            if summary := op.get("summary"):
                out += [f"**{_rst_escape(summary)}**", ""]
            if description := op.get("description"):
                out += [line for line in description.strip().splitlines()] + [""]
            params = op.get("parameters", [])
            if params:
                rows = []
                for p in params:
                    schema = p.get("schema", {})
                    default = schema.get("default")
                    rows.append([
                        f"``{p['name']}``",
                        p["in"],
                        "yes" if p.get("required") else "no",
                        _rst_escape(_type(schema)),
                        "" if default is None else f"``{default}``",
                        _rst_escape(_one_line(p.get("description") or schema.get("description"))),
                    ])
                out += ["Parameters:", ""] + _table(["name", "in", "required", "type", "default", "meaning"], rows)
            body = op.get("requestBody")
            if body:
                schema = next(iter(body.get("content", {}).values()), {}).get("schema", {})
                name = _ref_name(schema) or next(filter(None, map(_ref_name, schema.get("anyOf", []))), None)
                out += [f"Request body: ``{name or _type(schema)}``" + ("" if body.get("required") else " (optional)")
                        + (" (its fields: under Models)" if name in components else ""), ""]
            responses = op.get("responses", {})
            if responses:
                rows = []
                for code, response in responses.items():
                    schema = next(iter(response.get("content", {}).values()), {}).get("schema", {})
                    rows.append([f"``{code}``", _rst_escape(_one_line(response.get("description"))),
                                 _rst_escape(_type(schema)) if schema else ""])
                out += ["Responses:", ""] + _table(["status", "meaning", "body"], rows)
    if components:
        out += [models_title, "-" * len(models_title), "",
                "The request and response bodies above, as the OpenAPI document names them.", ""]
    for name, schema in components.items():
        out += [name, "~" * len(name), ""]
        if doc := schema.get("description"):
            out += [_rst_escape(_one_line(doc)), ""]
        props = schema.get("properties", {})
        if props:
            required = set(schema.get("required", []))
            rows = [
                [f"``{field}``", _rst_escape(_type(s)), "yes" if field in required else "no",
                 _rst_escape(_one_line(s.get("description")))]
                for field, s in props.items()
            ]
            out += _table(["field", "type", "required", "meaning"], rows)
    return out


class OpenAPIReference(SphinxDirective):
    """``.. openapi-reference::`` renders the control plane (the
    ``openapi_apps`` setting); ``.. openapi-reference:: module:app`` another
    FastAPI app (the standby's status API)."""

    has_content = False
    optional_arguments = 1

    def run(self):
        if self.arguments:
            app = load_app([self.arguments[0]])
            title = f"Models of {app.title}"
        else:
            app = load_app(self.config.openapi_apps)
            title = "Models"
        lines = render(app.openapi(), title)
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source="openapi"), container)
        return container.children


def setup(app):
    app.add_config_value("openapi_apps", ["primary.control.app:app"], "env")
    app.add_directive("openapi-reference", OpenAPIReference)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
