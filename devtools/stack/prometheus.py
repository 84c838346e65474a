"""Prometheus for the local stack and the tests: the compose scrape jobs, with local targets."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
COMPOSE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"


def write_config(path: Path, processors: list[str], apis: list[str], interval: str = "5s") -> Path:
    """deploy/prometheus/prometheus.yml with these targets instead of the compose hosts."""
    config = yaml.safe_load(COMPOSE_CONFIG.read_text())
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = interval
    config["rule_files"] = [str(ALERTS)]
    targets = {"fencex-processor": processors, "fencex-api": apis}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": targets[job["job_name"]]}]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
