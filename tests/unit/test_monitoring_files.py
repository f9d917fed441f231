"""The shipped Grafana dashboard and Prometheus config name metrics the platform exports."""

import json
import re

import yaml

from tests.conftest import ROOT

MONITORING = ROOT / "examples" / "monitoring"


def test_the_dashboard_queries_only_metrics_the_platform_records():
    names = set(re.findall(r'"platform_\w+"', (ROOT / "common" / "metrics.py").read_text()))
    exported = {
        f"ray_{n.strip(chr(34))}{suffix}" for n in names for suffix in ("_total", "_bucket")
    }
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    queried = {
        m
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for m in re.findall(r"ray_platform_\w+", target["expr"])
    }
    assert queried and queried <= exported, queried - exported
    assert len({p["gridPos"]["y"] * 100 + p["gridPos"]["x"] for p in dashboard["panels"]}) == len(
        dashboard["panels"]
    )


def test_the_scrape_config_targets_the_port_the_readme_starts_with():
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    targets = [
        t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    ]
    assert "127.0.0.1:8080" in targets
    assert "--metrics-export-port 8080" in (ROOT / "README.md").read_text()
