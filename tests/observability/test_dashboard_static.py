"""Static checks of the Grafana dashboard against the metrics contract (docs/metrics.md).

No Grafana or Prometheus needed: run with `.venv/bin/python -m pytest tests/observability -q`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dashboard_queries import dashboard_queries, iter_panels, load_dashboard, raw_queries, substitute

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "charge-point-gateway.json"
METRICS_DOC = REPO_ROOT / "docs" / "metrics.md"

METRIC_TOKEN = re.compile(r"ocppgw_[a-z_]+")
HISTOGRAM_SUFFIX = re.compile(r"_(bucket|sum|count)$")
# A metric name followed by its label matchers: ocppgw_x{...}.
SELECTOR = re.compile(r"(?<![\w:])(ocppgw_[a-z_]+)\s*\{([^}]*)\}")
# A bare metric name (no matchers), not part of a recording rule name or a label.
BARE_METRIC = re.compile(r"(?<![\w:\"])(ocppgw_[a-z_]+)(?![\w:{\"])")
RANGE_FUNCTIONS = ("rate", "irate", "increase")


def parse_metrics_doc() -> dict[str, dict]:
    """{metric name: {"type": ..., "labels": set(...)}} from the table in docs/metrics.md."""
    metrics = {}
    row = re.compile(r"^\|\s*`(ocppgw_[a-z_]+)`\s*\|\s*([a-z]+)\s*\|([^|]*)\|")
    for line in METRICS_DOC.read_text(encoding="utf-8").splitlines():
        m = row.match(line)
        if m:
            metrics[m.group(1)] = {
                "type": m.group(2),
                "labels": set(re.findall(r"`([a-z_]+)`", m.group(3))),
            }
    return metrics


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return load_dashboard(DASHBOARD)


@pytest.fixture(scope="module")
def metrics() -> dict[str, dict]:
    parsed = parse_metrics_doc()
    assert len(parsed) > 20, "could not read the metrics table in docs/metrics.md"
    return parsed


def data_panels(dashboard: dict) -> list[dict]:
    return [p for p in iter_panels(dashboard["panels"]) if p.get("type") != "row"]


def template_queries(dashboard: dict) -> list[tuple[str, str]]:
    out = []
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if var.get("type") == "query" and query:
            out.append((f"variable {var['name']}", query))
    return out


def resolve_metric(token: str, metrics: dict[str, dict]) -> str | None:
    """The contract's metric for a name used in a query, or None."""
    if token in metrics:
        return token
    base = HISTOGRAM_SUFFIX.sub("", token)
    if base != token and metrics.get(base, {}).get("type") == "histogram":
        return base
    return None


def call_arguments(expr: str, function: str) -> list[str]:
    """The argument text of every call of `function` in `expr`."""
    out = []
    for m in re.finditer(rf"(?<![\w:]){function}\s*\(", expr):
        depth, start = 1, m.end()
        i = start
        while i < len(expr) and depth:
            depth += {"(": 1, ")": -1}.get(expr[i], 0)
            i += 1
        out.append(expr[start : i - 1])
    return out


# ---------------------------------------------------------------------------------------
# The dashboard itself
# ---------------------------------------------------------------------------------------


def test_dashboard_json_parses_and_has_the_variables(dashboard):
    json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("instance", "ocpp_version"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    instance_query = variables["instance"]["query"]
    if isinstance(instance_query, dict):
        instance_query = instance_query["query"]
    assert instance_query == "label_values(ocppgw_build_info, instance)"


def test_panel_ids_are_unique(dashboard):
    ids = [p["id"] for p in iter_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))


def test_every_panel_has_a_target(dashboard):
    panels = data_panels(dashboard)
    assert panels
    for panel in panels:
        exprs = [t.get("expr") for t in panel.get("targets") or [] if t.get("expr")]
        assert exprs, f"panel {panel.get('title')!r} has no query"


def test_every_panel_uses_the_datasource_variable(dashboard):
    for panel in data_panels(dashboard):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_metric_is_in_the_contract(dashboard, metrics):
    unknown = []
    for title, expr in raw_queries(dashboard) + template_queries(dashboard):
        for token in METRIC_TOKEN.findall(expr):
            if resolve_metric(token, metrics) is None:
                unknown.append(f"{title}: {token}")
    assert not unknown, "metrics not in docs/metrics.md:\n" + "\n".join(unknown)


def test_rates_use_rate_interval(dashboard):
    bad = []
    for title, expr in raw_queries(dashboard):
        for function in RANGE_FUNCTIONS:
            for argument in call_arguments(expr, function):
                ranges = re.findall(r"\[([^\]]*)\]", argument)
                if not ranges or any(r.strip() not in ("$__rate_interval", "${__rate_interval}") for r in ranges):
                    bad.append(f"{title}: {function}({argument})")
        # No fixed range anywhere else either (e.g. rate(x[5m]) spelled oddly).
        for fixed in re.findall(r"\[\s*\d+[smhdwy][^\]]*\]", expr):
            bad.append(f"{title}: fixed range {fixed}")
    assert not bad, "\n".join(bad)


def test_every_selector_filters_by_instance_and_version(dashboard, metrics):
    """Each metric is filtered by $instance, and by $ocpp_version where it has the label."""
    bad = []
    for title, expr in raw_queries(dashboard):
        if BARE_METRIC.search(expr):
            bad.append(f"{title}: unfiltered metric in {expr}")
        for token, matchers in SELECTOR.findall(expr):
            metric = resolve_metric(token, metrics)
            if metric is None:
                continue  # reported by test_every_metric_is_in_the_contract
            if 'instance=~"$instance"' not in matchers:
                bad.append(f"{title}: {token} not filtered by instance")
            if "ocpp_version" in metrics[metric]["labels"] and 'ocpp_version=~"$ocpp_version"' not in matchers:
                bad.append(f"{title}: {token} not filtered by ocpp_version")
    assert not bad, "\n".join(bad)


def test_labels_used_exist_on_the_metric(dashboard, metrics):
    """Matchers and `by (...)` clauses name only the metric's labels (or target labels)."""
    target_labels = {"instance", "job", "le", "__name__"}
    bad = []
    for title, expr in raw_queries(dashboard):
        used_metrics = {resolve_metric(t, metrics) for t in METRIC_TOKEN.findall(expr)} - {None}
        known = set(target_labels)
        for metric in used_metrics:
            known |= metrics[metric]["labels"]
        for _, matchers in SELECTOR.findall(expr):
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
                if label not in known:
                    bad.append(f"{title}: label {label}")
        for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            for label in (l.strip() for l in clause.split(",")):
                if label and label not in known:
                    bad.append(f"{title}: grouping label {label}")
    assert not bad, "\n".join(bad)


def test_the_dashboard_covers_the_contract(dashboard, metrics):
    """Every metric of the contract appears on some panel."""
    used = set()
    for _, expr in raw_queries(dashboard):
        used |= {resolve_metric(t, metrics) for t in METRIC_TOKEN.findall(expr)}
    missing = sorted(set(metrics) - used)
    assert not missing, f"metrics on no panel: {missing}"


# ---------------------------------------------------------------------------------------
# The helper
# ---------------------------------------------------------------------------------------


def test_dashboard_queries_substitutes_every_variable():
    queries = dashboard_queries(DASHBOARD, {"instance": "10.0.0.1:9090", "ocpp_version": ["ocpp1.6", "ocpp2.0.1"]})
    assert queries
    for title, expr in queries:
        assert "$" not in expr and "[[" not in expr, (title, expr)
        assert "[1m]" in expr or "rate(" not in expr, (title, expr)
    joined = "\n".join(expr for _, expr in queries)
    assert r'instance=~"10\\.0\\.0\\.1:9090"' in joined
    assert r'ocpp_version=~"(ocpp1\\.6|ocpp2\\.0\\.1)"' in joined


def test_dashboard_queries_defaults_to_all():
    for _, expr in dashboard_queries(DASHBOARD, {}):
        assert 'instance=~"$' not in expr
        if "instance=~" in expr:
            assert 'instance=~".*"' in expr


def test_substitute_handles_every_syntax():
    variables = {"instance": "gw-1:9090", "datasource": "prom", "job": ["a", "b"], "all": "$__all"}
    assert (
        substitute('rate(x{instance=~"${instance}", j=~"$job", k=~"[[all]]"}[${__rate_interval}])', variables)
        == 'rate(x{instance=~"gw-1:9090", j=~"(a|b)", k=~".*"}[1m])'
    )
    assert substitute('x{a=~"${instance:regex}", d="$datasource"}', variables) == 'x{a=~"gw-1:9090", d="prom"}'
    assert substitute('x{a=~"$missing"}[$__rate_interval]', variables) == 'x{a=~".*"}[1m]'


def test_nested_rows_are_walked(tmp_path):
    dash = {
        "panels": [
            {"type": "row", "title": "open", "panels": []},
            {"type": "timeseries", "title": "top", "targets": [{"expr": "up{instance=~\"$instance\"}"}]},
            {
                "type": "row",
                "title": "collapsed",
                "collapsed": True,
                "panels": [
                    {"type": "stat", "title": "nested", "targets": [{"expr": "rate(x[$__rate_interval])"}, {"refId": "B"}]}
                ],
            },
        ]
    }
    path = tmp_path / "dash.json"
    path.write_text(json.dumps(dash))
    assert dashboard_queries(path, {"instance": "a.b"}) == [
        ("top", r'up{instance=~"a\\.b"}'),
        ("nested", "rate(x[1m])"),
    ]


def test_builtins_can_be_overridden():
    assert substitute("rate(x[$__rate_interval])", {}, {"__rate_interval": "15s"}) == "rate(x[15s])"
    assert substitute("rate(x[$__rate_interval])") == "rate(x[1m])"
    queries = dashboard_queries(DASHBOARD, {}, builtins={"__rate_interval": "15s"})
    assert any("[15s]" in expr for _, expr in queries)
    assert not any("[1m]" in expr for _, expr in queries)
