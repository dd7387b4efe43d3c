"""deploy/prometheus: the alerting rules, checked and unit-tested by promtool itself.

The same rules ship as a PrometheusRule in an opt-in kustomize component; the two
must not drift, each alert has a runbook entry in docs/operations.md, and a rule may
only query metrics that authproxy exports. ``python -m tests.test_alerts`` rewrites
the PrometheusRule from the rules file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "deploy" / "prometheus" / "authproxy.rules.yaml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "authproxy.rules.test.yaml"
COMPONENT = REPO / "deploy" / "kubernetes" / "components" / "prometheusrule"
OPERATIONS = REPO / "docs" / "operations.md"
HEADER = """# Generated from deploy/prometheus/authproxy.rules.yaml (tests/test_alerts.py checks
# that they agree): edit that file, then regenerate this one with
#   python -m tests.test_alerts
# Your Prometheus' ruleSelector may ask for a label such as `release: prometheus` here.
"""

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool comes with Debian's prometheus package (.ci/run installs it)",
)


def prometheus_rule() -> str:
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "authproxy", "labels": {"app.kubernetes.io/name": "authproxy"}},
        "spec": yaml.safe_load(RULES.read_text()),
    }
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=200)


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=120, cwd=RULES.parent
    )


@needs_promtool
def test_promtool_checks_the_rules_and_their_unit_tests_pass() -> None:
    res = promtool("check", "rules", RULES.name)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in res.stdout
    res = promtool("test", "rules", RULE_TESTS.name)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


@needs_promtool
def test_a_wrong_expectation_fails_promtool_test_rules(tmp_path: Path) -> None:
    """The unit tests can fail: the same file with one expected label changed does."""
    (tmp_path / RULES.name).write_text(RULES.read_text())
    broken = RULE_TESTS.read_text().replace("route: gp}", "route: inv}", 1)
    assert broken != RULE_TESTS.read_text()
    (tmp_path / "t.yaml").write_text(broken)
    res = subprocess.run(
        ["promtool", "test", "rules", "t.yaml"], capture_output=True, text=True, cwd=tmp_path
    )
    assert res.returncode != 0 and "FAILED" in res.stdout + res.stderr


def test_every_required_alert_is_there_with_a_runbook() -> None:
    names = [rule["alert"] for rule in alerts()]
    assert names == [
        "AuthproxyDown",
        "AuthproxyTokenRenewalFailing",
        "AuthproxyTokenExpiringSoon",
        "AuthproxyHigh5xxRatio",
        "Authproxy401Loop",
        "AuthproxyTokenStoreErrors",
        "AuthproxyConfigReloadFailed",
    ]
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested == set(names), "every alert has a unit test"
    ops = OPERATIONS.read_text()
    headings = {h.strip().lower() for h in re.findall(r"^#+ (.+)$", ops, re.M)}
    for rule in alerts():
        assert rule["labels"]["severity"] in ("critical", "warning")
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert anchor == rule["alert"].lower()
        assert rule["alert"].lower() in headings, f"no runbook heading for {rule['alert']}"


def test_rules_query_only_metrics_that_authproxy_exports() -> None:
    from proxy.telemetry.metrics import Metrics

    exported = {"up"}
    for family in Metrics().registry.collect():
        exported |= {family.name + end for end in ("", "_total", "_bucket", "_count", "_sum")}
    for rule in alerts():
        for name in re.findall(r"\b(authproxy_\w+|up)\{", rule["expr"]):
            assert name in exported, f"{rule['alert']} queries {name}, which is not exported"


def test_the_prometheusrule_component_has_the_same_rules() -> None:
    assert (COMPONENT / "prometheusrule.yaml").read_text() == prometheus_rule(), (
        "regenerate it: python -m tests.test_alerts"
    )
    spec = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    assert spec["kind"] == "Component" and spec["resources"] == ["prometheusrule.yaml"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_renders_an_overlay_with_the_component(tmp_path: Path) -> None:
    rel = Path("..") / Path(*[".."] * (len(tmp_path.parts) - 1)) / REPO.relative_to("/")
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "kustomization.yaml").write_text(
        f"resources:\n  - {rel}/deploy/kubernetes/overlays/classic-sidecar\n"
        f"components:\n  - {rel}/deploy/kubernetes/components/prometheusrule\n"
    )
    res = subprocess.run(
        ["kubectl", "kustomize", str(tmp_path / "k")], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    docs = [d for d in yaml.safe_load_all(res.stdout) if d]
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert rule["spec"] == yaml.safe_load(RULES.read_text())


if __name__ == "__main__":
    (COMPONENT / "prometheusrule.yaml").write_text(prometheus_rule())
    print(f"wrote {COMPONENT / 'prometheusrule.yaml'}", file=sys.stderr)
