"""deploy/: the container image, the Kubernetes manifests, the dashboard, the systemd unit.

All offline. Docker cannot run here, so the image is checked by doing what its build
does: the Dockerfile's own RUN lines install the repository (filtered by .dockerignore,
as a build context is) into a fresh venv, and the result is started. Manifests are
validated against the Kubernetes schemas, with kustomize overlays rendered by a small
renderer below (and compared with `kubectl kustomize` where kubectl exists). Every
ConfigMap's config must pass `authproxy check`, and the dashboard may only query
metrics that authproxy exports.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
MANIFESTS = sorted(
    p.relative_to(K8S).as_posix() for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"
)
# Native sidecars exist from 1.29 on; check the oldest schema they need and the newest.
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())
# Custom resources have no schema in kubernetes-validate: their required fields are
# checked by hand (test_podmonitor_scrapes_every_example).
CRD_GROUPS = ("monitoring.coreos.com/",)

# design.md "Metrics", plus the three that the token layer adds.
CONTRACT_METRICS = {
    "authproxy_requests_total",
    "authproxy_request_duration_seconds",
    "authproxy_upstream_duration_seconds",
    "authproxy_token_requests_total",
    "authproxy_token_request_duration_seconds",
    "authproxy_token_expiry_timestamp_seconds",
    "authproxy_unauthorized_retries_total",
    "authproxy_inflight_requests",
    "authproxy_proxy_errors_total",
    "authproxy_config_reloads_total",
    "authproxy_token_cache_total",
    "authproxy_token_lock_wait_seconds",
    "authproxy_token_store_errors_total",
    # issue 14: operations
    "authproxy_build_info",
    "authproxy_route_ready",
}

SECRETS_DIR = "/etc/authproxy/secrets/"
FILE_REF = re.compile(r"\$\{file:([^}]+)\}")
ENV_REF = re.compile(r"\$\{env:([^}]+)\}")


# --- helpers -------------------------------------------------------------------------


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _merge(target: dict[str, Any], patch: dict[str, Any], where: str) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value, f"{where}.{key}")
        else:
            # A strategic merge of lists needs the schema's merge keys: leave it to
            # kustomize, and keep the patches here to maps.
            assert not isinstance(value, list), f"{where}.{key}: list in a patch"
            target[key] = value


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """Render a kustomization that uses only resources, components and map patches."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    known = {"apiVersion", "kind", "resources", "components", "patches"}
    assert set(spec) <= known, f"{directory}: renderer knows only {sorted(known)}"
    docs: list[dict[str, Any]] = []
    for entry in spec.get("resources", []) + spec.get("components", []):
        path = directory / entry
        docs += kustomize(path) if path.is_dir() else load_docs(path)
    ids = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(ids) == len(set(ids)), f"{directory}: duplicate resources {ids}"
    for patch in spec.get("patches", []):
        for pdoc in load_docs(directory / patch["path"]):
            pid = (pdoc["kind"], pdoc["metadata"]["name"])
            assert pid in ids, f"{directory}: patch {pid} matches no resource"
            _merge(docs[ids.index(pid)], pdoc, f"{pid}")
    return docs


def by_id(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def check_schema(doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith(CRD_GROUPS):
        return
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            problem = f"{doc['kind']}/{doc['metadata']['name']} ({version}) {where}: {exc.message}"
        else:
            continue
        pytest.fail(problem, pytrace=False)


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet"}:
            yield doc, doc["spec"]["template"]["spec"]


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return spec.get("initContainers", []) + spec["containers"]


def authproxy_container(spec: dict[str, Any]) -> dict[str, Any] | None:
    found = [c for c in all_containers(spec) if c["name"] == "authproxy"]
    return found[0] if found else None


def authproxy_pods(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(d, s) for d, s in pod_specs(docs) if authproxy_container(s)]


def seconds(duration: str | int) -> float:
    if isinstance(duration, int | float):
        return float(duration)
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration).groups()
    return float(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def mounted_files(spec: dict[str, Any], container: dict[str, Any]) -> dict[str, tuple]:
    """Files the container sees from ConfigMap/Secret volumes: path -> (kind, name, key)."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    files: dict[str, tuple] = {}
    for mount in container.get("volumeMounts", []):
        assert "subPath" not in mount, "subPath mounts never see ConfigMap/Secret updates"
        volume = volumes[mount["name"]]
        sources = [*volume.get("projected", {}).get("sources", [])]
        sources += [{k: volume[k]} for k in ("configMap", "secret") if k in volume]
        for source in sources:
            for kind, src in source.items():
                name = src.get("name") or src["secretName"]
                for item in src.get("items", []):
                    path = f"{mount['mountPath'].rstrip('/')}/{item['path']}"
                    files[path] = (kind, name, item["key"])
    return files


def rendered(overlay: str) -> list[dict[str, Any]]:
    return kustomize(K8S / "overlays" / overlay)


def config_text(docs: list[dict[str, Any]]) -> str:
    return by_id(docs)[("ConfigMap", "authproxy-config")]["data"]["config.yaml"]


def run_check(
    cmd: list[str],
    text: str,
    tmp_path: Path,
    cwd: Path | None = None,
    extra: tuple[str, ...] = (),
) -> subprocess.CompletedProcess:
    """`authproxy check` on a config, with fake files for its ${file:} secrets.

    PYTHONPATH is dropped, so that the image's venv runs what it installed."""
    secrets = tmp_path / "secrets"
    secrets.mkdir(parents=True, exist_ok=True)
    for ref in FILE_REF.findall(text):
        assert ref.startswith(SECRETS_DIR), f"{ref}: secrets live under {SECRETS_DIR}"
        (secrets / ref[len(SECRETS_DIR) :]).write_text("fake-secret-value\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({name: "fake-env-value" for name in ENV_REF.findall(text)})
    path = tmp_path / "config.yaml"
    path.write_text(text.replace(SECRETS_DIR, f"{secrets}/"))
    return subprocess.run(
        [*cmd, "check", "-c", str(path), *extra],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or tmp_path,
        timeout=30,
    )


# --- manifests -----------------------------------------------------------------------


@pytest.mark.parametrize("name", MANIFESTS)
def test_every_manifest_file_validates_on_its_own(name: str) -> None:
    docs = load_docs(K8S / name)
    assert docs, f"{name} is empty"
    for doc in docs:
        check_schema(doc)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates(overlay: str) -> None:
    docs = rendered(overlay)
    for doc in docs:
        check_schema(doc)
    kubectl = shutil.which("kubectl")
    if kubectl:  # the renderer above must agree with the real kustomize
        out = subprocess.run(
            [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        assert by_id([d for d in yaml.safe_load_all(out) if d]) == by_id(docs)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_authproxy_pod_is_hardened_probed_and_bounded(overlay: str) -> None:
    docs = rendered(overlay)
    pods = authproxy_pods(docs)
    assert pods, f"{overlay}: no pod with an authproxy container"
    config = yaml.safe_load(config_text(docs))
    assert config["listen"] == "127.0.0.1:8080"
    assert config["admin_listen"] == "0.0.0.0:9090"  # the kubelet probes the pod IP
    grace = seconds(config.get("shutdown_grace", "20s"))
    for workload, spec in pod_specs(docs):
        name = workload["metadata"]["name"]
        assert spec.get("automountServiceAccountToken") is False, name
        pod_sc = spec.get("securityContext", {})
        for c in all_containers(spec):
            sc = c.get("securityContext", {})
            where = f"{name}/{c['name']}"
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
            assert isinstance(uid, int) and uid > 0, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile"))
            assert seccomp == {"type": "RuntimeDefault"}, where
            for kind in ("requests", "limits"):
                assert set(c.get("resources", {}).get(kind, {})) >= {"cpu", "memory"}, where

    for _, spec in pods:
        proxy = authproxy_container(spec)
        ports = {p["name"]: p["containerPort"] for p in proxy.get("ports", [])}
        for probe, path in (
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
            ("startupProbe", "/healthz"),
        ):
            get = proxy[probe]["httpGet"]
            assert get["path"] == path, probe
            assert ports.get(get["port"], get["port"]) == 9090, probe
        # SIGTERM drains for shutdown_grace (plus any preStop hook): the kubelet must not
        # SIGKILL before that.
        pre_stop = proxy.get("lifecycle", {}).get("preStop", {}).get("exec", {})
        hook = re.search(r"sleep\((\d+)\)", " ".join(pre_stop.get("command", [])))
        needed = grace + (int(hook.group(1)) if hook else 0)
        assert spec["terminationGracePeriodSeconds"] > needed

        # The config and every secret it names are mounted where the config says.
        files = mounted_files(spec, proxy)
        env = {e["name"]: e["value"] for e in proxy.get("env", [])}
        assert files[env["AUTHPROXY_CONFIG"]] == ("configMap", "authproxy-config", "config.yaml")
        secret_keys = set(load_docs(K8S / "secret.example.yaml")[0]["stringData"])
        for ref in FILE_REF.findall(config_text(docs)):
            kind, secret, key = files.get(ref, (None, None, None))
            assert kind == "secret" and secret == "authproxy-credentials", ref
            assert key in secret_keys, f"{key}: not in secret.example.yaml"

        # The app reaches authproxy on the pod's loopback, at a configured route.
        app = [c for c in spec["containers"] if c["name"] != "authproxy"]
        base = "http://127.0.0.1:8080"
        paths = [
            e["value"][len(base) :] + "/"
            for c in app
            for e in c.get("env", [])
            if str(e.get("value", "")).startswith(base + "/")
        ]
        prefixes = [r["prefix"] for r in config["routes"].values()]
        assert paths and all(any(p.startswith(x) for x in prefixes) for p in paths)


@pytest.mark.parametrize("overlay", ["native-sidecar", "multi-replica-redis"])
def test_native_sidecar_starts_before_the_app_and_stops_after_it(overlay: str) -> None:
    for _, spec in authproxy_pods(rendered(overlay)):
        init = {c["name"]: c for c in spec.get("initContainers", [])}
        assert init["authproxy"]["restartPolicy"] == "Always"
        assert "startupProbe" in init["authproxy"]  # the app waits for it
        assert all(c["name"] != "authproxy" for c in spec["containers"])


def test_classic_sidecar_orders_start_and_stop_with_hooks() -> None:
    ((_, spec),) = authproxy_pods(rendered("classic-sidecar"))
    assert "initContainers" not in spec  # works on clusters without native sidecars
    first = spec["containers"][0]
    assert first["name"] == "authproxy"  # containers start in order
    hooks = first["lifecycle"]
    assert "/healthz" in " ".join(hooks["postStart"]["exec"]["command"])
    assert hooks["preStop"]["exec"]["command"]


def test_multi_replica_shares_tokens_through_redis() -> None:
    docs = rendered("multi-replica-redis")
    ((workload, spec),) = authproxy_pods(docs)
    assert workload["spec"]["replicas"] == 3
    config = yaml.safe_load(config_text(docs))
    assert config["token_store"] == {
        "type": "redis",
        "url": "redis://redis:6379/0",
        "password": "${file:/etc/authproxy/secrets/redis-password}",
    }
    objects = by_id(docs)
    service = objects[("Service", "redis")]
    redis = objects[("Deployment", "redis")]["spec"]["template"]
    assert service["spec"]["selector"].items() <= redis["metadata"]["labels"].items()
    assert [p["port"] for p in service["spec"]["ports"]] == [6379]
    # Only the sidecars may reach Redis.
    policy = objects[("NetworkPolicy", "redis")]["spec"]
    allowed = policy["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert allowed.items() <= workload["spec"]["template"]["metadata"]["labels"].items()
    # Redis requires the password that the sidecars read: the same key of one Secret.
    (server,) = redis["spec"]["containers"]
    args = server["args"]
    var = re.fullmatch(r"\$\((\w+)\)", args[args.index("--requirepass") + 1])
    assert var, args
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in server["env"]}
    files = mounted_files(spec, authproxy_container(spec))
    secret = files["/etc/authproxy/secrets/redis-password"]
    assert secret == ("secret", refs[var.group(1)]["name"], refs[var.group(1)]["key"])
    assert refs["REDISCLI_AUTH"] == refs[var.group(1)]  # the readiness probe authenticates
    assert "redis-cli" in server["readinessProbe"]["exec"]["command"]


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server (Debian)")
def test_multi_replica_redis_runs_with_the_password_and_the_sidecar_config_gets_in(
    tmp_path: Path,
) -> None:
    """The overlay's own redis-server arguments, on a real redis-server, and
    `authproxy check --connect` with the overlay's config: it authenticates with the
    password from the Secret's file; without that password it is refused."""
    docs = rendered("multi-replica-redis")
    (server,) = by_id(docs)[("Deployment", "redis")]["spec"]["template"]["spec"]["containers"]
    # What the Secret's key holds (run_check writes it, plus a newline that authproxy
    # strips and Kubernetes would not: redis.yaml says to store it without one).
    password = "fake-secret-value"
    port = free_port()
    args = [a.replace("$(REDIS_PASSWORD)", password) for a in server["args"]]
    assert args[0] == "redis-server" and password in args
    proc = subprocess.Popen(
        [*args, "--port", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        cli, *command = server["readinessProbe"]["exec"]["command"]
        probe = [cli, "-p", str(port), *command]
        env = dict(os.environ, REDISCLI_AUTH=password)
        deadline = time.monotonic() + 20
        while (
            pong := subprocess.run(probe, capture_output=True, text=True, env=env)
        ).stdout != "PONG\n":
            assert proc.poll() is None and time.monotonic() < deadline, pong
            time.sleep(0.05)
        noauth = subprocess.run(probe, capture_output=True, text=True)
        assert "NOAUTH" in noauth.stdout + noauth.stderr  # the password is required
        text = config_text(docs).replace("redis://redis:6379/0", f"redis://127.0.0.1:{port}/0")
        cmd = [sys.executable, "-m", "proxy"]
        ok = run_check(cmd, text, tmp_path / "with", cwd=REPO, extra=("--connect",))
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "connected and authenticated" in ok.stdout
        without = "\n".join(line for line in text.splitlines() if "redis-password" not in line)
        refused = run_check(cmd, without, tmp_path / "without", cwd=REPO, extra=("--connect",))
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert password not in refused.stdout + refused.stderr + ok.stdout + ok.stderr
    finally:
        proc.terminate()
        proc.wait(10)


def test_admin_networkpolicy_lets_only_prometheus_reach_the_admin_port(tmp_path: Path) -> None:
    (policy,) = kustomize(K8S / "components" / "admin-networkpolicy")
    check_schema(policy)
    spec = policy["spec"]
    (monitor,) = kustomize(K8S / "components" / "podmonitor")
    assert spec["podSelector"] == monitor["spec"]["selector"]  # the same pods
    assert spec["policyTypes"] == ["Ingress"]
    admin, rest = spec["ingress"]
    (peer,) = admin["from"]  # one peer: namespace AND pod selector, not either
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    assert peer["podSelector"]["matchLabels"], "Prometheus' pods only, not the whole namespace"
    assert admin["ports"] == [{"port": 9090, "protocol": "TCP"}]
    # Every other port stays open as without the policy (it applies to the whole pod).
    assert "from" not in rest
    opened: dict[str, set[int]] = {"TCP": set(), "UDP": set()}
    for p in rest["ports"]:
        opened[p["protocol"]].update(range(p["port"], p.get("endPort", p["port"]) + 1))
    assert opened == {"TCP": set(range(1, 65536)) - {9090}, "UDP": set(range(1, 65536))}
    for overlay in OVERLAYS:
        for workload, pod in authproxy_pods(rendered(overlay)):
            labels = workload["spec"]["template"]["metadata"]["labels"]
            assert spec["podSelector"]["matchLabels"].items() <= labels.items(), overlay
            ports = {p["name"]: p["containerPort"] for p in authproxy_container(pod)["ports"]}
            assert ports["authproxy-admin"] == 9090, overlay

    # As an overlay opts in: rendered here, and by kubectl where it exists.
    overlay = tmp_path / "with-policy"
    overlay.mkdir()
    spec_file = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(K8S / "overlays" / "native-sidecar", overlay)],
        "components": [os.path.relpath(K8S / "components" / "admin-networkpolicy", overlay)],
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(spec_file))
    docs = kustomize(overlay)
    for doc in docs:
        check_schema(doc)
    assert ("NetworkPolicy", "authproxy-admin") in by_id(docs)
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run(
            [kubectl, "kustomize", str(overlay)],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        assert by_id([d for d in yaml.safe_load_all(out) if d]) == by_id(docs)


def test_podmonitor_scrapes_every_example() -> None:
    (monitor,) = kustomize(K8S / "components" / "podmonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "PodMonitor" and monitor["metadata"]["name"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    for overlay in OVERLAYS:
        for workload, spec in authproxy_pods(rendered(overlay)):
            labels = workload["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), overlay
            ports = {p["name"]: p["containerPort"] for p in authproxy_container(spec)["ports"]}
            assert ports[endpoint["port"]] == 9090, overlay


def test_secret_example_stays_out_of_every_kustomization() -> None:
    # `kubectl apply -k` must never reset real credentials to the placeholders.
    for overlay in OVERLAYS:
        assert ("Secret", "authproxy-credentials") not in by_id(rendered(overlay))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_config_passes_authproxy_check(overlay: str, tmp_path: Path) -> None:
    # `python -m proxy` from the checkout's root: this checkout's proxy/ is the one run.
    cmd = [sys.executable, "-m", "proxy"]
    result = run_check(cmd, config_text(rendered(overlay)), tmp_path, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Grafana dashboard ---------------------------------------------------------------


def dashboard_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "authproxy.json").read_text())
    panels = [p for top in dashboard["panels"] for p in [top, *top.get("panels", [])]]
    queries = [t["expr"] for p in panels for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        query = var.get("query")
        queries.append(query["query"] if isinstance(query, dict) else str(query or ""))
    return queries


def metric_names(text: str) -> set[str]:
    return {
        re.sub(r"_(bucket|count|sum|created)$", "", m)
        for m in re.findall(r"authproxy_[a-z_]+", text)
    }


def test_dashboard_queries_only_exported_metrics() -> None:
    used = set().union(*map(metric_names, dashboard_queries()))
    assert used, "no authproxy_ metric in the dashboard"
    assert used <= CONTRACT_METRICS, sorted(used - CONTRACT_METRICS)


def test_dashboard_shows_what_an_operator_asks_first() -> None:
    exprs = "\n".join(dashboard_queries())
    for needle in (
        "rate(authproxy_requests_total",  # request rate per route
        'code=~"5.."',  # errors
        "authproxy_proxy_errors_total",
        "histogram_quantile(0.95, sum by (route, le) "
        "(rate(authproxy_upstream_duration_seconds_bucket",
        "authproxy_token_requests_total",  # token fetches
        'outcome!="success"',  # ... and their failures
        'authproxy_token_expiry_timestamp_seconds{job=~"$job", namespace=~"$namespace", '
        'pod=~"$pod", route=~"$route"}) - time()',
        "authproxy_unauthorized_retries_total",  # 401 replays
    ):
        assert needle in exprs, needle


def test_dashboard_filters_by_job_namespace_and_pod_and_shows_up_and_process() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "authproxy.json").read_text())
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names == ["datasource", "job", "namespace", "pod", "route"]
    for expr in dashboard_queries():
        if expr.startswith("label_values(authproxy_build_info"):
            continue  # the variables' own queries, each filtered by the ones before it
        for m in re.finditer(r"\b(authproxy_[a-z_]+|process_[a-z_]+|up)\{([^}]*)\}", expr):
            for var in ("job", "namespace", "pod"):
                assert f'{var}=~"${var}"' in m.group(2), expr
    exprs = "\n".join(dashboard_queries())
    for needle in ("up{", "process_cpu_seconds_total{", "process_resident_memory_bytes{"):
        assert needle in exprs, needle


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus)")
def test_every_dashboard_query_parses_in_promtool(tmp_path: Path) -> None:
    """Each query, with Grafana's variables filled in, as a recording rule: promtool
    parses (and type-checks) every PromQL expression of a rules file."""
    rules = []
    for i, expr in enumerate(dashboard_queries()):
        if expr.startswith("label_values("):
            expr = expr[len("label_values(") :].rsplit(",", 1)[0]
        if not expr or expr == "prometheus":
            continue
        expr = expr.replace("$__rate_interval", "5m").replace("$", "")
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    res = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(rules)} rules found" in res.stdout


# --- systemd -------------------------------------------------------------------------


def test_systemd_unit_is_hardened_reloads_on_hup_and_is_the_one_documented() -> None:
    unit_text = (DEPLOY / "systemd" / "authproxy.service").read_text()
    assert unit_text in (REPO / "docs" / "deploy.md").read_text()
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(unit_text)
    service = unit["Service"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes"
    assert "User" in service or service.get("DynamicUser") == "yes"
    assert seconds(service["TimeoutStopSec"]) > 20  # shutdown_grace's default
    # READY=1 from `serve` once it listens (issue 14): ordered units wait for it.
    assert service["Type"] == "notify"
    assert service["ExecStart"].split()[1:3] == ["serve", "-c"]
    for key, value in {
        "PrivateUsers": "yes",
        "PrivateMounts": "yes",
        "MemoryDenyWriteExecute": "yes",
        "DevicePolicy": "closed",
        "PrivateDevices": "yes",
    }.items():
        assert service.get(key) == value, key


def unit_copy(tmp_path: Path) -> Path:
    unit = tmp_path / "authproxy.service"
    shutil.copy(DEPLOY / "systemd" / "authproxy.service", unit)
    return unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze")
def test_systemd_unit_verifies_and_its_exposure_stays_low(tmp_path: Path) -> None:
    """systemd-analyze offline: no PID 1 needed. The only complaint allowed from
    `verify` is the binary that is not installed on this machine."""
    unit = unit_copy(tmp_path)
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if line.strip() and "/opt/authproxy/bin/authproxy is not executable" not in line
    ]
    assert problems == [], problems
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    out = done.stdout + done.stderr
    level = re.search(r"Overall exposure level for authproxy.service: (\d+\.\d+)", out)
    assert level, out
    assert float(level.group(1)) <= 1.2, out  # 1.4 before PrivateUsers, MDWE and the rest
    for setting in ("PrivateUsers=", "PrivateMounts=", "MemoryDenyWriteExecute="):
        assert any(line.startswith("✓ " + setting) for line in out.splitlines()), setting


#: run argv[1:] under the kernel's "memory deny write execute" (prctl PR_SET_MDWE,
#: Linux 6.3+), which is what systemd's MemoryDenyWriteExecute= enforces (there with
#: seccomp); inherited by every child, so by --workers' workers too
MDWE_EXEC = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "if libc.prctl(65, 1, 0, 0, 0) != 0:\n"
    "    sys.exit(77)\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


class _Upstream(threading.Thread):
    """A plain HTTP upstream that answers 200 with the header authproxy added."""

    def __init__(self) -> None:
        import http.server

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                body = (self.headers.get("X-Api-Key") or "").encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        super().__init__(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])


def test_serving_holds_under_memory_deny_write_execute(tmp_path: Path) -> None:
    """MemoryDenyWriteExecute=yes in the unit: authproxy, on uvloop, with two workers
    (the ctypes prctl), serves, counts and drains with no writable+executable page."""
    import importlib.util

    assert importlib.util.find_spec("uvloop"), "the test extra installs uvloop: serve runs on it"
    wx = "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)"
    probe = subprocess.run(
        [sys.executable, "-c", MDWE_EXEC, sys.executable, "-c", wx],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if probe.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE")
    # The control: under MDWE a W+X mapping is refused, so the run below can fail.
    assert probe.returncode != 0 and "PermissionError" in probe.stderr, probe.stderr
    upstream = _Upstream()
    upstream.start()
    listen, admin = free_port(), free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{listen}\nadmin_listen: 127.0.0.1:{admin}\nshutdown_grace: 2s\n"
        f"routes:\n  e: {{upstream: 'http://127.0.0.1:{upstream.port}/', auth: "
        "{type: static, header: X-Api-Key, value: mdwe-static-key}}\n"
    )
    log = (tmp_path / "serve.log").open("w")
    serve = [sys.executable, "-m", "proxy", "serve", "-c", str(config), "--workers", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-c", MDWE_EXEC, *serve],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        answer = None
        while answer is None:
            assert proc.poll() is None and time.monotonic() < deadline, (
                tmp_path / "serve.log"
            ).read_text()
            try:
                answer = http_get(f"http://127.0.0.1:{listen}/e/x")
            except OSError:
                time.sleep(0.05)
        assert answer == (200, "mdwe-static-key")
        # worker 0 serves the admin port; worker 1 may have answered before it bound
        metrics_answer = None
        while metrics_answer is None:
            assert proc.poll() is None and time.monotonic() < deadline, "no admin port"
            try:
                metrics_answer = http_get(f"http://127.0.0.1:{admin}/metrics")
            except OSError:
                time.sleep(0.05)
        status, metrics = metrics_answer
        assert status == 200 and "authproxy_requests_total" in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, (tmp_path / "serve.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        upstream.server.shutdown()
        upstream.server.server_close()


# --- container image -----------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuations joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), args.strip()))
    return stages


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in stage:
        if instruction == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    return env


def _docker_pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: `*` and `?` stay within one path segment."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(out)


def dockerignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: a pattern matching a directory covers what it holds; the last
    matching pattern wins; `!` re-includes."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _docker_pattern(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(p) for p in prefixes):
            ignored = not negate
    return ignored


def copy_build_context(dst: Path) -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    reincluded = [p[1:].strip("/") for p in patterns if p.startswith("!")]
    for top, dirs, files in os.walk(REPO):
        rel_top = Path(top).relative_to(REPO).as_posix().removeprefix(".")
        # Skip an ignored directory (.git, .venv) unless a `!` pattern reaches inside it.
        dirs[:] = [
            d
            for d in dirs
            if not dockerignored(f"{rel_top}/{d}".lstrip("/"), patterns)
            or any(r.startswith(f"{rel_top}/{d}/".lstrip("/")) for r in reincluded)
        ]
        for name in files:
            rel = f"{rel_top}/{name}".lstrip("/")
            if not dockerignored(rel, patterns):
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, dst / rel)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_dockerfile_builds_a_slim_nonroot_image_serving_by_default() -> None:
    build, runtime = dockerfile_stages()
    text = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"ARG PYTHON_IMAGE=(\S+)", text)
    # pinned: a full Python version and the Debian release, never a moving tag
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base.group(1)), base
    # ... with the digest pinning documented next to it, in the form docker takes
    example = re.search(r"PYTHON_IMAGE=(python:\S+)@sha256:", text)
    assert example and example.group(1) == base.group(1)
    assert build[0][1].startswith("${PYTHON_IMAGE} AS ") and runtime[0][1] == "${PYTHON_IMAGE}"
    user = [args for instruction, args in runtime if instruction == "USER"][-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or gid.isdigit())
    env = env_of(runtime)
    assert env["AUTHPROXY_CONFIG"] == "/etc/authproxy/config.yaml"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # nothing to write on a read-only root
    commands = {i: json.loads(a) for i, a in runtime if i in {"ENTRYPOINT", "CMD"}}
    assert commands["ENTRYPOINT"] + commands["CMD"] == ["authproxy", "serve"]
    installs = [a for i, a in build if i == "RUN" and "pip" in a and " install " in a]
    assert len(installs) == 1 and "[speed,redis]" in installs[0]


def dockerfile_labels(stage: list[tuple[str, str]]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for instruction, args in stage:
        if instruction == "LABEL":
            labels.update(item.split("=", 1) for item in shlex.split(args))
    return labels


def test_image_carries_the_oci_labels_and_a_healthcheck_of_its_own() -> None:
    _, runtime = dockerfile_stages()
    labels = dockerfile_labels(runtime)
    oci = "org.opencontainers.image."
    for key in ("title", "description", "licenses", "version", "revision", "created",
                "source", "base.name"):  # fmt: skip
        assert labels.get(oci + key), key
    assert labels[oci + "licenses"] == "Apache-2.0"
    # the build-specific labels are build arguments of the stage that labels
    declared = {a.split("=", 1)[0] for i, a in runtime if i == "ARG"}
    for key in ("version", "revision", "created", "source", "base.name"):
        assert re.fullmatch(r"\$\{(\w+)\}", labels[oci + key]).group(1) in declared, key
    (health,) = [a for i, a in runtime if i == "HEALTHCHECK"]
    options, _, command = health.partition("CMD")
    assert json.loads(command) == ["authproxy", "healthcheck"]
    assert "--timeout=" in options and "--start-period=" in options


def build_image_venv(root: Path) -> Path:
    """Run the build stage's RUN lines, with the image's paths mapped under root."""
    context, venv = root / "src", root / "venv"
    copy_build_context(context)
    build = dockerfile_stages()[0]
    env = dict(os.environ, **env_of(build))

    def host_path(token: str) -> str:
        for image_path, here in (("/opt/authproxy", venv), ("/src", context)):
            if token.startswith(image_path):
                return str(here) + token[len(image_path) :]
        return sys.executable if token == "python" else token

    for instruction, args in build:
        if instruction == "RUN":
            argv = [host_path(t) for t in shlex.split(args) if not t.startswith("--mount=")]
            done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=240)
            assert done.returncode == 0, f"RUN {args}\n{done.stdout}{done.stderr}"
    return venv


class ImageBuild(threading.Thread):
    """The image's install, in the background while the other tests run (it is most of
    this file's time: pip resolves and downloads on every run where its cache is off)."""

    def __init__(self, root: Path) -> None:
        super().__init__(name="image-build", daemon=True)
        self.root = root
        self.venv: Path | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.venv = build_image_venv(self.root)
        except BaseException as exc:  # handed to the tests that need the venv
            self.error = exc


@pytest.fixture(scope="module", autouse=True)
def image_build(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ImageBuild | None]:
    if not any("image_venv" in item.fixturenames for item in request.session.items):
        yield None
        return
    build = ImageBuild(tmp_path_factory.mktemp("image"))
    build.start()
    yield build
    build.join()


@pytest.fixture(scope="module")
def image_venv(image_build: ImageBuild) -> Path:
    image_build.join(timeout=300)
    assert not image_build.is_alive(), "the image install took over 300s"
    if image_build.error is not None:
        raise image_build.error
    assert image_build.venv is not None
    return image_build.venv


def test_image_install_has_the_speed_and_redis_extras(image_venv: Path) -> None:
    subprocess.run([image_venv / "bin" / "python", "-c", "import uvloop, redis"], check=True)
    # Bytecode is compiled at build time: a read-only root never needs to write it.
    assert list(image_venv.glob("lib/python3*/site-packages/proxy/__pycache__/*.pyc"))


def test_image_checks_config_serves_health_and_stops_cleanly_on_sigterm(
    image_venv: Path, tmp_path: Path
) -> None:
    listen, admin, upstream = free_port(), free_port(), free_port()
    config = (
        f"listen: 127.0.0.1:{listen}\n"
        f"admin_listen: 127.0.0.1:{admin}\n"
        "shutdown_grace: 2s\n"
        "routes:\n"
        "  echo:\n"
        "    prefix: /echo/\n"
        f"    upstream: http://127.0.0.1:{upstream}/\n"
        "    auth:\n"
        "      type: static\n"
        "      header: X-Api-Key\n"
        "      value: ${file:/etc/authproxy/secrets/key}\n"
    )
    authproxy = str(image_venv / "bin" / "authproxy")
    check = run_check([authproxy], config, tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr

    # As in the image: no -c, the config comes from AUTHPROXY_CONFIG.
    env = dict(
        os.environ, AUTHPROXY_CONFIG=str(tmp_path / "config.yaml"), PYTHONDONTWRITEBYTECODE="1"
    )
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [authproxy, "serve"], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 20
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, _ = http_get(f"http://127.0.0.1:{admin}/healthz")
                break
            except OSError:
                time.sleep(0.1)
        assert status == 200, (tmp_path / "serve.log").read_text()
        # Every contract metric that the dashboard charts is really exported.
        status, metrics = http_get(f"http://127.0.0.1:{admin}/metrics")
        assert status == 200
        charted = set().union(*map(metric_names, dashboard_queries()))
        assert charted <= metric_names(metrics), sorted(charted - metric_names(metrics))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, (tmp_path / "serve.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_image_healthcheck_passes_while_serving_and_fails_after(
    image_venv: Path, tmp_path: Path
) -> None:
    """The Dockerfile's HEALTHCHECK as Docker runs it: no -c, the config from
    AUTHPROXY_CONFIG, the admin address from the config (not 9090)."""
    authproxy = str(image_venv / "bin" / "authproxy")
    env = dict(os.environ, AUTHPROXY_CONFIG=str(tmp_path / "config.yaml"))
    if healthcheck(authproxy, env, tmp_path) is None:
        pytest.skip("this checkout's authproxy has no `healthcheck` command yet (helper cli)")
    listen, admin = free_port(), free_port()
    (tmp_path / "config.yaml").write_text(
        f"listen: 127.0.0.1:{listen}\nadmin_listen: 127.0.0.1:{admin}\nshutdown_grace: 1s\n"
        "routes:\n  e: {upstream: 'http://127.0.0.1:9/', auth: {type: none}}\n"
    )
    before = healthcheck(authproxy, env, tmp_path)
    assert before is not None and before.returncode != 0, "healthy before serving"
    proc = subprocess.Popen([authproxy, "serve"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while (health := healthcheck(authproxy, env, tmp_path)).returncode != 0:  # type: ignore[union-attr]
            assert proc.poll() is None and time.monotonic() < deadline, health
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    after = healthcheck(authproxy, env, tmp_path)
    assert after is not None and after.returncode != 0, "healthy with nothing serving"


def healthcheck(
    authproxy: str, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str] | None:
    """``authproxy healthcheck`` (the Dockerfile's HEALTHCHECK); None when the command
    does not exist in this build."""
    has = subprocess.run([authproxy, "healthcheck", "--help"], capture_output=True, env=env)
    if has.returncode != 0:
        return None
    return subprocess.run(
        [authproxy, "healthcheck"], capture_output=True, text=True, env=env, cwd=cwd, timeout=30
    )


#: `pip install` of the name `authproxy` (with extras or quoted) from the index, which
#: holds an unrelated project of that name (issue 14, item 7)
INDEX_INSTALL = re.compile(r"pip3? install\s+(?:-\S+\s+)*['\"]?authproxy(?![-\w./])")


def test_no_doc_or_unit_installs_the_other_authproxy_from_the_index() -> None:
    texts = {p.relative_to(REPO).as_posix(): p.read_text() for p in REPO.glob("docs/*.md")}
    texts["README.md"] = (REPO / "README.md").read_text()
    for p in DEPLOY.rglob("*"):
        if p.is_file() and p.suffix != ".json":
            texts[p.relative_to(REPO).as_posix()] = p.read_text()
    found = {name: m.group(0) for name, text in texts.items() if (m := INDEX_INSTALL.search(text))}
    assert found == {}, found
    # ... and the pattern does catch what was there before.
    for bad in (
        "pip install 'authproxy[speed]'",
        "pip install authproxy",
        'pip install -U "authproxy"',
    ):
        assert INDEX_INSTALL.search(bad), bad
    for good in ("pip install '.[speed]'", 'pip install "$(ls dist/authproxy-*.whl)[speed]"'):
        assert not INDEX_INSTALL.search(good), good
    assert "pip wheel" in texts["README.md"] and "pip wheel" in texts["docs/deploy.md"]


def test_require_tokens_example_of_the_deploy_doc_passes_check(tmp_path: Path) -> None:
    docs = (REPO / "docs" / "deploy.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", docs, re.S) if "require_tokens" in b]
    text = config_text(rendered("native-sidecar")) + block
    result = run_check([sys.executable, "-m", "proxy"], text, tmp_path, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    named = yaml.safe_load(block)["readiness"]["require_tokens"]
    assert set(named) <= set(yaml.safe_load(text)["routes"])


def test_ipv6_wildcard_admin_listen_of_the_docs_serves_probes(tmp_path: Path) -> None:
    """`admin_listen: "[::]:9090"` (docs/deploy.md, config.example.yaml) on a real
    serve: the probes reach it over IPv6, as the kubelet does on an IPv6 cluster."""
    assert '"[::]:9090"' in (REPO / "docs" / "deploy.md").read_text()
    assert '"[::]:9090"' in (REPO / "config.example.yaml").read_text()
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    admin = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f'listen: "[::1]:{free_port()}"\nadmin_listen: "[::]:{admin}"\n'
        "routes:\n  e: {upstream: 'http://127.0.0.1:9/', auth: {type: none}}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "-c", str(config)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        status = None
        while status is None:
            assert proc.poll() is None and time.monotonic() < deadline, "no answer on [::1]"
            try:
                status, _ = http_get(f"http://[::1]:{admin}/healthz")
            except OSError:
                time.sleep(0.05)
        assert status == 200
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def test_license_is_the_apache_license_that_pyproject_names() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "Apache-2.0"}
    text = (REPO / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    for needle in (
        "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
        "9. Accepting Warranty or Additional Liability.",
        "END OF TERMS AND CONDITIONS",
        "APPENDIX: How to apply the Apache License to your work.",
    ):
        assert needle in text, needle
    assert len(text.split()) > 1500  # the whole text, not a pointer to it


def test_docs_do_not_go_stale_on_paths() -> None:
    docs = (REPO / "docs" / "deploy.md").read_text()
    for path in re.findall(r"\bdeploy/[\w./-]+\w", docs):
        assert (REPO / path).exists(), f"docs/deploy.md names {path}, which does not exist"
