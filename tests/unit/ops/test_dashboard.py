"""docs/grafana-dashboard.json: a Grafana dashboard whose every query uses
metrics (and labels) the channel's registry really has."""

import json
import re
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

from connectors.servicenow.ops.metrics import PREFIX, HandoffMetrics

DASHBOARD = Path(__file__).resolve().parents[3] / "docs" / "grafana-dashboard.json"
NAME = re.compile(PREFIX + r"[a-z_]+")
BY = re.compile(r"\bby \(([^)]*)\)")
#: Labels Prometheus adds to every scraped series, and the histogram bucket label.
SCRAPE_LABELS = {"instance", "job", "le"}


@pytest.fixture(scope="module")
def dashboard():
    return json.loads(DASHBOARD.read_text())


def panels(dashboard):
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def queries(dashboard):
    exprs = [target["expr"] for panel in panels(dashboard) for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


def labels_by_series():
    """Series name (with its suffixes) -> the label names it carries."""
    metrics = HandoffMetrics()
    labels = {}
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            for suffix in ("", "_total", "_bucket", "_sum", "_count"):
                labels[metric._name + suffix] = set(metric._labelnames)
    return labels


def test_it_is_a_grafana_dashboard(dashboard):
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["title"] and dashboard["uid"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert all(isinstance(grid[key], int) for key in ("h", "w", "x", "y"))
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["datasource"]["type"] == "prometheus"
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert {"datasource", "instance"} <= variables


def test_every_metric_name_it_uses_exists_in_the_registry(dashboard):
    exposed = HandoffMetrics().names()
    used = {name for expr in queries(dashboard) for name in NAME.findall(expr)}
    assert used
    assert used <= exposed, sorted(used - exposed)


def test_every_metric_has_a_panel(dashboard):
    used = {name for expr in queries(dashboard) for name in NAME.findall(expr)}
    families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in HandoffMetrics().names()}
    unused = {family for family in families if not any(name.startswith(family) for name in used)}
    assert not unused, sorted(unused)


def test_it_groups_only_by_labels_the_series_have(dashboard):
    labels = labels_by_series()
    for expr in queries(dashboard):
        available = set(SCRAPE_LABELS)
        for name in NAME.findall(expr):
            available |= labels[name]
        for group in BY.findall(expr):
            grouped = {label.strip() for label in group.split(",")}
            assert grouped <= available, (expr, grouped - available)
        assert expr.count("(") == expr.count(")"), expr
