"""Extract the PromQL queries of a Grafana dashboard, ready to send to Prometheus.

Standard library only. `dashboard_queries(path, variables)` walks every panel of the
dashboard JSON (rows included, expanded or collapsed) and returns each target's `expr`
with Grafana's variables replaced:

- `$__rate_interval` (and `$__interval`) become `1m`, `$__range` becomes `1h` (pass
  `builtins={"__rate_interval": "15s"}` for other values, e.g. to query a Prometheus
  that has only a few seconds of data);
- a template variable (`$name`, `${name}`, `${name:format}` or `[[name]]`) becomes the
  value given in `variables`, regex-escaped for use inside a PromQL `=~"..."` string;
  a list of values becomes `(a|b)`; a variable that is missing, `None`, `"$__all"` or
  `"All"` becomes `.*` (what the dashboard's "All" option sends).

Run as a script to print them:  python3 dashboard_queries.py DASHBOARD.json [name=value ...]
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Union

VariableValue = Union[str, Iterable[str], None]

# Grafana's built-in interval variables, with fixed values fit for an instant query.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
}

ALL_VALUES = {None, "$__all", "All", "all"}

# $name, ${name}, ${name:format}, [[name]] and [[name:format]].
_VARIABLE = re.compile(
    r"\$\{(?P<braced>\w+)(?::[^}]*)?\}"
    r"|\[\[(?P<bracketed>\w+)(?::[^\]]*)?\]\]"
    r"|\$(?P<plain>\w+)"
)

# Characters with a meaning in RE2 (Prometheus's regex dialect) outside a class.
_REGEX_SPECIAL = re.compile(r"([\\.^$|?*+()\[\]{}])")


def _regex_escape(value: str) -> str:
    """Escape a value as a regex, then as the text of a PromQL double-quoted string."""
    regex = _REGEX_SPECIAL.sub(r"\\\1", value)
    return regex.replace("\\", "\\\\").replace('"', '\\"')


def _format_value(value: VariableValue) -> str:
    if isinstance(value, str):
        if value in ALL_VALUES:
            return ".*"
        return _regex_escape(value)
    if value is None:
        return ".*"
    values = [v for v in value]
    if not values or any(v in ALL_VALUES for v in values):
        return ".*"
    if len(values) == 1:
        return _regex_escape(values[0])
    return "(" + "|".join(_regex_escape(v) for v in values) + ")"


def substitute(
    expr: str,
    variables: Mapping[str, VariableValue] | None = None,
    builtins: Mapping[str, str] | None = None,
) -> str:
    """Replace Grafana variables in one expression (see the module docstring).
    `builtins` overrides some of the BUILTINS values."""
    variables = variables or {}
    fixed = {**BUILTINS, **(builtins or {})}

    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bracketed") or match.group("plain")
        if name in fixed:
            return fixed[name]
        return _format_value(variables.get(name))

    return _VARIABLE.sub(replace, expr)


def iter_panels(panels: Iterable[dict]) -> Iterator[dict]:
    """Every panel, depth first, including those nested in rows (collapsed rows keep
    their panels in `panels`)."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels") or [])


def load_dashboard(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    # An export "for sharing externally" or an API answer wraps the dashboard.
    if "dashboard" in data and "panels" not in data:
        data = data["dashboard"]
    return data


def raw_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel, variables untouched."""
    out = []
    for panel in iter_panels(dashboard.get("panels") or []):
        for target in panel.get("targets") or []:
            expr = target.get("expr")
            if expr:
                out.append((panel.get("title", ""), expr))
    return out


def dashboard_queries(
    path: str | Path,
    variables: Mapping[str, VariableValue] | None = None,
    builtins: Mapping[str, str] | None = None,
) -> list[tuple[str, str]]:
    """(panel title, expr) for every target expr of the dashboard at `path`, with
    `$__rate_interval` replaced by `1m` (or `builtins["__rate_interval"]`) and template
    variables by `variables`."""
    dashboard = load_dashboard(path)
    return [
        (title, substitute(expr, variables, builtins)) for title, expr in raw_queries(dashboard)
    ]


def _main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    variables = dict(arg.split("=", 1) for arg in argv[1:])
    for title, expr in dashboard_queries(argv[0], variables):
        print(f"{title}\t{expr}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
