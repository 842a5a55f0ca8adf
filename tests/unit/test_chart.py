"""The Helm chart: lint, render in every mode, validate each object, schema, drift, Prometheus rules.

Rendering goes through the Helm SDK in-process (helm-python-sdk: no helm binary, no download), built-in
kinds are validated against Kubernetes' own OpenAPI schemas (kubernetes-validate --strict), custom
kinds against their CRDs or, for the Prometheus Operator's kinds, against the structure they need.
"""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from unittest import mock

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.support import crdcheck
from tokenscale.cli import build_parser
from tokenscale.commands import render_install
from tokenscale.commands.run import settings_from_args
from tokenscale.engines.metric_names import METRIC_NAMES
from tokenscale.observability import OperatorMetrics

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "tokenscale"
KUBERNETES_VERSION = "1.33"
RELEASE, NAMESPACE = "tokenscale", "tokenscale-system"

SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "ha": {"ha": {"enabled": True}, "replicaCount": 3},
    "ha-namespaced": {"ha": {"enabled": True}, "watchNamespaces": ["team-a", "team-b"]},
    "monitoring": {
        "monitoring": {
            "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "podMonitor": {"enabled": True},
            "operatorMonitor": {"enabled": True},
            "kubeStateMetrics": {"enabled": True},
        }
    },
    "monitoring-network-policy": {
        "monitoring": {"operatorMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}},
        "networkPolicy": {
            "enabled": True,
            "prometheus": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                           "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}},
        },
    },
    "network-policy": {
        "networkPolicy": {
            "enabled": True,
            "apiServerCIDRs": ["10.0.0.1/32"],
            "prometheus": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
        }
    },
    "prometheus-auth": {
        "prometheus": {
            "url": "https://prometheus.example.internal",
            "timeoutSeconds": 5,
            "headers": {"X-Scope-OrgID": "team-a"},
            "auth": {
                "bearerToken": {"secretName": "prom-token"},
                "basicAuth": {"username": "tokenscale", "passwordSecretName": "prom-password"},
            },
            "ca": {"configMapName": "prom-ca"},
        },
        "defaultServerImage": "registry.example/tokenscale-server:1",
        "logLevel": "debug",
        "tickSeconds": 5,
    },
}

# The Prometheus Operator's kinds: the structure the operator needs to accept them (no CRD here).
_SELECTOR = {"type": "object", "properties": {"matchLabels": {"type": "object"}, "matchExpressions": {"type": "array"}}}
_MONITORING_SCHEMAS = {
    "PodMonitor": {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", "podMetricsEndpoints"],
                "properties": {
                    "selector": _SELECTOR,
                    "namespaceSelector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
                    },
                    "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                    "podMetricsEndpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string", "pattern": "^/"},
                                "interval": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
                                "honorLabels": {"type": "boolean"},
                                "relabelings": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["sourceLabels", "targetLabel"],
                                        "properties": {
                                            "action": {"enum": ["replace", "keep", "drop", "labelmap"]},
                                            "sourceLabels": {"type": "array", "items": {"type": "string"}},
                                            "targetLabel": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            }
        },
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["groups"],
                "properties": {
                    "groups": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name", "rules"],
                            "properties": {
                                "name": {"type": "string"},
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["expr"],
                                        "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
                                        "properties": {
                                            "record": {"type": "string"},
                                            "alert": {"type": "string"},
                                            "expr": {"type": "string"},
                                            "for": {"type": "string"},
                                            "labels": {"type": "object"},
                                            "annotations": {"type": "object"},
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            }
        },
    },
}


@pytest.fixture(scope="module")
def chart():
    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


def render(chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object the chart renders, the chart's crds/ included."""
    objects = [yaml.safe_load(crd["data"]) for crd in chart.crds]
    for name, text in chart.render(values, name=RELEASE, namespace=NAMESPACE).items():
        if not name.endswith("NOTES.txt"):
            objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = by_kind(objects, kind)
    return found


AGGREGATE_TO = "rbac.authorization.k8s.io/aggregate-to-"


def operator_role(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The ClusterRole bound to the operator (the others are aggregated into users' roles)."""
    (role,) = [r for r in by_kind(objects, "ClusterRole")
               if not any(label.startswith(AGGREGATE_TO) for label in r["metadata"]["labels"])]
    return role


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def run_settings(objects: list[dict[str, Any]]):
    """The operator's Settings as `tokenscale run` reads the rendered container: the names must be real."""
    container = operator_container(objects)
    assert container["args"] == ["run"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert all(name.startswith("TOKENSCALE_") for name in env)
    with mock.patch.dict(os.environ, env, clear=True):
        return settings_from_args(build_parser("run").parse_args(["run"]))


_VALIDATED: set[str] = set()  # objects the scenarios share (the CRDs) are validated once


def validate_builtin(obj: dict[str, Any]) -> None:
    key = json.dumps(obj, sort_keys=True)
    if key in _VALIDATED:
        return
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {error.message}")
    _VALIDATED.add(key)


# --- lint, render, validate ------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["defaults", "namespaced", "ha", "monitoring", "network-policy",
                                      "monitoring-network-policy"])
def test_helm_lint_strict_passes(scenario):
    report = helm_python.lint(CHART, SCENARIOS[scenario], strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def test_chart_versions_follow_the_package():
    metadata = yaml.safe_load((CHART / "Chart.yaml").read_text())
    package = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert metadata["version"] == package and metadata["appVersion"] == package


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_object_validates(chart, scenario):
    objects = render(chart, SCENARIOS[scenario])
    peering_crds = {c["spec"]["names"]["kind"]: c for c in by_kind(objects, "CustomResourceDefinition")}
    checked = 0
    for obj in objects:
        group = obj["apiVersion"].rpartition("/")[0]
        if group == "monitoring.coreos.com":
            jsonschema.validate(obj, _MONITORING_SCHEMAS[obj["kind"]])
        elif group == "kopf.dev":
            assert crdcheck.validate(obj, peering_crds[obj["kind"]]) == []
        else:
            validate_builtin(obj)
        assert obj["metadata"]["name"]
        checked += 1
    assert checked == len(objects) >= 8


def test_defaults_install_everything_for_all_namespaces(chart):
    objects = render(chart, {})
    kinds = sorted(obj["kind"] for obj in objects)
    assert kinds == sorted(
        ["CustomResourceDefinition"] * 3
        + ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "PodDisruptionBudget"]
        + ["ClusterRole"] * 2  # aggregated into the built-in view and edit roles
    )
    settings = run_settings(objects)
    assert settings.clusterwide and settings.standalone and settings.peering is None
    assert settings.prometheus_url == "http://prometheus-operated.monitoring.svc:9090"
    assert (settings.service_label, settings.namespace_label) == ("tokenscale_io_service", "namespace")
    assert settings.tick_seconds == 15 and settings.log_level == "INFO"
    assert (settings.rate_window, settings.long_rate_window) == ("1m", "5m")
    assert settings.liveness == "http://0.0.0.0:8080/healthz"
    assert settings.metrics_address == "0.0.0.0:8081"
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert one(objects, "PodDisruptionBudget")["spec"] == {
        "maxUnavailable": 1,
        "selector": deployment["spec"]["selector"],
    }
    binding = one(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]


def test_the_operator_pod_is_hardened(chart):
    deployment = one(render(chart, {}), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = operator_container([deployment])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and probe["port"] == "health"
    assert {"name": "health", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    assert {"name": "metrics", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]  # writable /tmp only


def test_namespaced_mode_grants_roles_only_in_the_watched_namespaces(chart):
    objects = render(chart, SCENARIOS["namespaced"])
    assert run_settings(objects).namespaces == ("team-a", "team-b")
    roles = by_kind(objects, "Role")
    bindings = by_kind(objects, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": RELEASE}
        assert binding["subjects"][0]["namespace"] == NAMESPACE
    cluster_resources = {res for rule in operator_role(objects)["rules"] for res in rule["resources"]}
    # Cluster-wide only what is cluster-scoped: nothing that lives in a namespace.
    assert cluster_resources == {"customresourcedefinitions", "namespaces"}


def _grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


@pytest.mark.parametrize("scenario", ["defaults", "namespaced", "ha"])
def test_users_built_in_roles_gain_inferenceservices_by_aggregation(chart, scenario):
    """Namespace users with the built-in view / edit / admin roles read / manage InferenceServices: the
    API server's aggregation controller folds ClusterRoles carrying these labels into those roles."""
    roles = {r["metadata"]["name"]: r for r in by_kind(render(chart, SCENARIOS[scenario]), "ClusterRole")}
    view, edit = roles[f"{RELEASE}-view"], roles[f"{RELEASE}-edit"]
    true = {f"{AGGREGATE_TO}{name}": "true" for name in ("view", "edit", "admin")}
    assert view["metadata"]["labels"].items() >= true.items()
    assert edit["metadata"]["labels"].items() >= {k: v for k, v in true.items() if not k.endswith("view")}.items()
    assert f"{AGGREGATE_TO}view" not in edit["metadata"]["labels"]  # viewers get no writes
    group = "tokenscale.io"
    reads = {(group, "inferenceservices", verb) for verb in ("get", "list", "watch")}
    assert reads <= _grants(view)
    assert all(verb in ("get", "list", "watch") for _, _, verb in _grants(view))
    writes = {(group, "inferenceservices", verb) for verb in ("create", "update", "patch", "delete")}
    assert writes | {(group, "inferenceservices/scale", verb) for verb in ("update", "patch")} <= _grants(edit)
    # Status stays the operator's: no user role writes it.
    assert not any(res == "inferenceservices/status" and verb not in ("get", "list", "watch")
                   for _, res, verb in _grants(view) | _grants(edit))
    # Nothing but InferenceServices, and never a wildcard.
    assert {g for g, _, _ in _grants(view) | _grants(edit)} == {group}
    assert "*" not in {v for _, _, v in _grants(view) | _grants(edit)}
    # Not bound to anyone by the chart: aggregation is the only way they take effect.
    bindings = by_kind(render(chart, SCENARIOS[scenario]), "ClusterRoleBinding")
    assert all(b["roleRef"]["name"] == RELEASE for b in bindings)


def test_ha_runs_several_peered_replicas(chart):
    objects = render(chart, SCENARIOS["ha"])
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    # HA with the default replicaCount of 1 still runs two.
    assert one(render(chart, {"ha": {"enabled": True}}), "Deployment")["spec"]["replicas"] == 2
    settings = run_settings(objects)
    assert settings.peering == RELEASE and not settings.standalone
    assert one(objects, "ClusterKopfPeering")["metadata"]["name"] == RELEASE
    assert one(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    anti = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"] == (
        "kubernetes.io/hostname"
    )
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in operator_container(objects)["env"]}
    assert env["POD_ID"] == "metadata.name"  # kopf's identity of each replica in the peering


def test_ha_in_namespaced_mode_peers_in_each_namespace(chart):
    objects = render(chart, SCENARIOS["ha-namespaced"])
    peerings = by_kind(objects, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert not by_kind(objects, "ClusterKopfPeering")


def test_replicas_without_peering_are_refused(chart):
    with pytest.raises(helm_python.HelmError, match="needs ha.enabled=true"):
        chart.render({"replicaCount": 2}, name=RELEASE, namespace=NAMESPACE)


def test_prometheus_auth_reaches_the_operator_from_secrets(chart):
    objects = render(chart, SCENARIOS["prometheus-auth"])
    settings = run_settings(objects)
    mounts = {m["name"]: m["mountPath"] for m in operator_container(objects)["volumeMounts"]}
    volumes = {v["name"]: v for v in one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert settings.prometheus_bearer_token_file == mounts["prometheus-bearer-token"] + "/token"
    assert volumes["prometheus-bearer-token"]["secret"]["secretName"] == "prom-token"
    assert settings.prometheus_username == "tokenscale"
    assert settings.prometheus_password_file == mounts["prometheus-password"] + "/password"
    assert volumes["prometheus-password"]["secret"]["secretName"] == "prom-password"
    assert settings.prometheus_ca_file == mounts["prometheus-ca"] + "/ca.crt"
    assert volumes["prometheus-ca"]["configMap"]["name"] == "prom-ca"
    assert settings.prometheus_headers == (("X-Scope-OrgID", "team-a"),)
    assert settings.prometheus_timeout == 5 and settings.tick_seconds == 5
    assert settings.default_server_image == "registry.example/tokenscale-server:1"
    assert settings.log_level == "DEBUG"
    # No secret value is ever in the pod spec: only references.
    assert "secretKeyRef" not in yaml.safe_dump(one(objects, "Deployment"))


def test_network_policy_allows_only_dns_api_server_and_prometheus(chart):
    policy = one(render(chart, SCENARIOS["network-policy"]), "NetworkPolicy")
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [{"ports": [{"port": 8080, "protocol": "TCP"}]}]
    dns, api, prometheus = spec["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert [p["port"] for p in api["ports"]] == [443, 6443] and api["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    assert prometheus["ports"] == [{"port": 9090, "protocol": "TCP"}]
    assert prometheus["to"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    # The port follows prometheus.url unless set.
    for url, port in (("https://prometheus.example", 443), ("http://thanos-query.monitoring:10902", 10902)):
        values = {"networkPolicy": {"enabled": True}, "prometheus": {"url": url}}
        egress = one(render(chart, values), "NetworkPolicy")["spec"]["egress"]
        assert egress[2]["ports"] == [{"port": port, "protocol": "TCP"}] and "to" not in egress[2]


def test_pod_monitors_give_prometheus_the_service_label(chart):
    objects = render(chart, SCENARIOS["monitoring"])
    monitors = {m["metadata"]["name"]: m["spec"] for m in by_kind(objects, "PodMonitor")}
    assert set(monitors) == {"tokenscale-serving", "tokenscale-serving-trtllm", "tokenscale-operator"}
    del monitors["tokenscale-operator"]
    paths = {name: spec["podMetricsEndpoints"][0]["path"] for name, spec in monitors.items()}
    assert paths == {"tokenscale-serving": "/metrics", "tokenscale-serving-trtllm": "/prometheus/metrics"}
    for spec in monitors.values():
        assert spec["namespaceSelector"] == {"any": True}
        relabel = {r["targetLabel"]: r["sourceLabels"] for r in spec["podMetricsEndpoints"][0]["relabelings"]}
        assert relabel["tokenscale_io_service"] == ["__meta_kubernetes_pod_label_tokenscale_io_service"]
        assert relabel["namespace"] == ["__meta_kubernetes_namespace"]
    # The label names follow the operator's settings.
    custom = render(chart, {**SCENARIOS["monitoring"], "labels": {"service": "svc", "namespace": "ns"},
                            "watchNamespaces": ["a", "b"]})
    assert (run_settings(custom).service_label, run_settings(custom).namespace_label) == ("svc", "ns")
    for monitor in by_kind(custom, "PodMonitor"):
        if monitor["metadata"]["name"] == "tokenscale-operator":
            continue
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["a", "b"]}
        targets = {r["targetLabel"] for r in monitor["spec"]["podMetricsEndpoints"][0]["relabelings"]}
        assert {"svc", "ns"} <= targets


def test_the_operator_monitor_scrapes_the_operators_metrics_port(chart):
    assert not [m for m in by_kind(render(chart, {}), "PodMonitor")]  # off by default
    objects = render(chart, SCENARIOS["monitoring-network-policy"])
    (monitor,) = by_kind(objects, "PodMonitor")
    assert monitor["metadata"]["name"] == "tokenscale-operator"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    spec = monitor["spec"]
    pod = one(objects, "Deployment")["spec"]["template"]
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = spec["podMetricsEndpoints"]
    # The series' own namespace label (the InferenceService's) must survive the scrape.
    assert endpoint == {"port": "metrics", "path": "/metrics", "interval": "30s", "honorLabels": True}
    port = {p["name"]: p["containerPort"] for p in operator_container(objects)["ports"]}["metrics"]
    assert run_settings(objects).metrics_address == f"0.0.0.0:{port}"
    # With a NetworkPolicy, Prometheus (and only Prometheus) may reach that port.
    health, metrics = one(objects, "NetworkPolicy")["spec"]["ingress"]
    assert health == {"ports": [{"port": 8080, "protocol": "TCP"}]}
    assert metrics["ports"] == [{"port": port, "protocol": "TCP"}]
    assert metrics["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]


# --- values schema -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": "two"}, "at '/replicaCount': got string, want integer"),
        ({"replicaCont": 2}, "additional properties 'replicaCont' not allowed"),
        ({"ha": {"enable": True}}, "at '/ha': additional properties 'enable' not allowed"),
        ({"watchNamespaces": "team-a"}, "at '/watchNamespaces': got string, want array"),
        ({"watchNamespaces": ["Team_A"]}, "at '/watchNamespaces/0'"),
        ({"prometheus": {"url": "prometheus:9090"}}, "at '/prometheus/url'"),
        ({"logLevel": "verbose"}, "at '/logLevel'"),
        ({"tickSeconds": 0}, "at '/tickSeconds'"),
        ({"labels": {"service": "tokenscale.io/service"}}, "at '/labels/service'"),
        ({"monitoring": {"prometheusRule": {"rateWindow": "one minute"}}}, "rateWindow"),
        ({"monitoring": {"operatorMonitor": {"enable": True}}}, "additional properties 'enable' not allowed"),
    ],
)
def test_values_typos_are_rejected_with_a_clear_message(chart, values, message):
    with pytest.raises(helm_python.HelmValuesError) as raised:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(raised.value)


def test_the_default_values_satisfy_the_schema(chart):
    chart.validate_schema(yaml.safe_load((CHART / "values.yaml").read_text()))


# --- generated files ---------------------------------------------------------------------------------


def test_the_chart_carries_the_generated_crd_byte_for_byte():
    copy = CHART / "files" / "crds" / "tokenscale.io_inferenceservices.yaml"
    generated = REPO / "crds" / "tokenscale.io_inferenceservices.yaml"
    assert copy.read_bytes() == generated.read_bytes(), "the chart's CRD copy is stale: run `make crds`"


def test_the_rendered_crd_is_the_generated_one_kept_on_uninstall(chart):
    (crd,) = [o for o in render(chart, {}) if o["metadata"]["name"] == "inferenceservices.tokenscale.io"]
    assert crd["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
    # The generated file's content, untouched (tests/unit/test_api.py checks that file against the models).
    assert crd == yaml.safe_load((REPO / "crds" / "tokenscale.io_inferenceservices.yaml").read_text())
    names = [o["metadata"]["name"] for o in render(chart, {"crds": {"install": False}})]
    assert "inferenceservices.tokenscale.io" not in names


def test_install_yaml_is_the_chart_rendered_with_defaults(chart):
    committed = (REPO / "manifests" / "install.yaml").read_text()
    assert committed == render_install.render_install(), "manifests/install.yaml is stale: run `make manifests`"
    docs = [doc for doc in yaml.safe_load_all(committed) if doc]
    assert docs[0] == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": NAMESPACE, "labels": {"app.kubernetes.io/part-of": "tokenscale"}},
    }
    # The same objects `helm install` creates, CRDs before anything that needs them.
    assert sorted(map(yaml.safe_dump, docs[1:])) == sorted(map(yaml.safe_dump, render(chart, {})))
    kinds = [doc["kind"] for doc in docs]
    assert kinds.index("Deployment") > max(i for i, k in enumerate(kinds) if k == "CustomResourceDefinition")


# --- Prometheus rules --------------------------------------------------------------------------------


def rule_groups(chart, values: dict[str, Any] | None = None) -> dict[str, Any]:
    values = values or SCENARIOS["monitoring"]
    return {"groups": one(render(chart, values), "PrometheusRule")["spec"]["groups"]}


def test_recording_rules_cover_every_engine_metric_name():
    """The chart's metric names per signal are tokenscale.engines.metric_names', every spelling."""
    helper = (CHART / "templates" / "_signals.tpl").read_text()
    body = helper.split('define "tokenscale.signalMetrics" -}}')[1].split("{{- end }}")[0]
    in_chart = {signal: set(names) for signal, names in yaml.safe_load(body).items()}
    expected: dict[str, set[str]] = {}
    for names in METRIC_NAMES.values():
        for signal in in_chart:
            expected.setdefault(signal, set()).update(getattr(names, signal))
    assert in_chart == expected


def test_rules_follow_the_configured_label_names(chart):
    groups = rule_groups(chart, {**SCENARIOS["monitoring"], "labels": {"service": "svc", "namespace": "ns"}})
    for rule in groups["groups"][0]["rules"]:
        assert "by (ns, svc" in rule["expr"] and 'svc!=""' in rule["expr"]
        assert "tokenscale_io_service" not in rule["expr"]


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=30)


@pytest.mark.prometheus
def test_promtool_checks_the_rendered_rules(chart, tmp_path):
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_groups(chart)))
    result = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 11 rules found" in result.stdout


# Two services: a vLLM pod exporting the colon names, a second vLLM pod of the same service scraped as
# OpenMetrics (underscored names), and a TGI service. Counters grow per minute by the numbers below.
_RULE_TESTS = """
rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'vllm:generation_tokens_total{namespace="ml",tokenscale_io_service="llama",pod="llama-a"}'
        values: '0+6000x10'
      - series: 'vllm_generation_tokens_total{namespace="ml",tokenscale_io_service="llama",pod="llama-b"}'
        values: '0+3000x10'
      - series: 'tgi_request_generated_tokens_sum{namespace="ml",tokenscale_io_service="mistral",pod="m-a"}'
        values: '0+1200x10'
      - series: 'vllm:num_requests_waiting{namespace="ml",tokenscale_io_service="llama",pod="llama-a"}'
        values: '3x10'
      - series: 'vllm_num_requests_waiting{namespace="ml",tokenscale_io_service="llama",pod="llama-b"}'
        values: '5x10'
      - series: 'tgi_queue_size{namespace="ml",tokenscale_io_service="mistral",pod="m-a"}'
        values: '7x10'
      - series: 'tokenscale_metrics_available{namespace="ml",name="llama",pod="tokenscale-0"}'
        values: '1 1 0x10'
      - series: 'tokenscale_scaling_limited{namespace="ml",name="mistral",pod="tokenscale-0"}'
        values: '1x12'
      - series: 'tokenscale_metrics_available{namespace="ml",name="mistral",pod="tokenscale-0"}'
        values: '1x12'
      - series: 'tokenscale_scaling_limited{namespace="ml",name="llama",pod="tokenscale-0"}'
        values: '0x12'
      - series: 'tokenscale_prometheus_errors_total{namespace="tokenscale-system",pod="tokenscale-0"}'
        values: '0x5 1+1x20'
      - series: 'tokenscale_inferenceservice_status_condition{namespace="ml",name="broken",type="Degraded",reason="InvalidSpec"}'
        values: '1x12'
    promql_expr_test:
      - expr: tokenscale_service:generated_tokens:rate1m
        eval_time: 5m
        exp_samples:
          - labels: 'tokenscale_service:generated_tokens:rate1m{namespace="ml",tokenscale_io_service="llama"}'
            value: 150
          - labels: 'tokenscale_service:generated_tokens:rate1m{namespace="ml",tokenscale_io_service="mistral"}'
            value: 20
      - expr: tokenscale_service:queue_depth:sum
        eval_time: 5m
        exp_samples:
          - labels: 'tokenscale_service:queue_depth:sum{namespace="ml",tokenscale_io_service="llama"}'
            value: 8
          - labels: 'tokenscale_service:queue_depth:sum{namespace="ml",tokenscale_io_service="mistral"}'
            value: 7
    alert_rule_test:
      - alertname: TokenscaleMetricsUnavailable
        eval_time: 5m
        exp_alerts: []
      - alertname: TokenscaleMetricsUnavailable
        eval_time: 12m
        exp_alerts:
          - exp_labels: {severity: warning, namespace: ml, name: llama, pod: tokenscale-0}
            exp_annotations:
              summary: 'ml/llama: no serving metrics, autoscaling holds'
              description: "The operator cannot read this InferenceService's signals from Prometheus (kubectl describe tsvc shows why: condition MetricsAvailable). It holds the replica count and never scales down on missing data; check Prometheus and the pods' scraping."
      - alertname: TokenscaleScalingLimited
        eval_time: 11m
        exp_alerts:
          - exp_labels: {severity: warning, namespace: ml, name: mistral, pod: tokenscale-0}
            exp_annotations:
              summary: 'ml/mistral: scaling is limited'
              description: 'The autoscaler wants a replica count it cannot reach: maxReplicas, or pods that cannot be scheduled (no free GPU). Demand may be going unserved; the condition ScalingLimited says which.'
      - alertname: TokenscalePrometheusQueriesFailing
        eval_time: 9m
        exp_alerts: []
      - alertname: TokenscalePrometheusQueriesFailing
        eval_time: 17m
        exp_alerts:
          - exp_labels: {severity: warning, namespace: tokenscale-system, pod: tokenscale-0}
            exp_annotations:
              summary: 'tokenscale operator tokenscale-0 cannot query Prometheus'
              description: "The operator's signal reads from Prometheus fail, so every autoscaled InferenceService holds its replica count. Check prometheus.url, its auth, and the NetworkPolicy."
      - alertname: TokenscaleDegraded
        eval_time: 11m
        exp_alerts:
          - exp_labels: {severity: critical, namespace: ml, name: broken, type: Degraded, reason: InvalidSpec}
            exp_annotations:
              summary: 'ml/broken is degraded (InvalidSpec)'
              description: 'The operator cannot realise this InferenceService; kubectl describe tsvc shows the message.'
"""


_BEHIND_TESTS = """
rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'tokenscale_services_behind_schedule{namespace="tokenscale-system",pod="tokenscale-0"}'
        values: '0 0 0 12x20'
      - series: 'tokenscale_oldest_decision_age_seconds{namespace="tokenscale-system",pod="tokenscale-0"}'
        values: '15x20'
      - series: 'tokenscale_tick_interval_seconds{namespace="tokenscale-system",pod="tokenscale-0"}'
        values: '15x20'
    alert_rule_test:
      - alertname: TokenscaleAutoscalerBehind
        eval_time: 2m
        exp_alerts: []
      - alertname: TokenscaleAutoscalerBehind
        eval_time: 20m
        exp_alerts:
          - exp_labels: {severity: warning, namespace: tokenscale-system, pod: tokenscale-0}
            exp_annotations:
              summary: 'tokenscale operator tokenscale-0 is behind: services not decided within two ticks'
              description: "The autoscaler's tick does not reach every InferenceService in time (tokenscale_services_behind_schedule, tokenscale_oldest_decision_age_seconds): scaling reacts late. Check the tick's duration (tokenscale_tick_duration_seconds), the API server's latency and the operator's CPU limit."
"""


@pytest.mark.prometheus
def test_the_autoscaler_behind_alert_fires_on_services_behind_schedule(chart, tmp_path):
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_groups(chart)))
    (tmp_path / "tests.yaml").write_text(_BEHIND_TESTS)
    result = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.prometheus
def test_promtool_unit_tests_the_rules(chart, tmp_path):
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_groups(chart)))
    (tmp_path / "tests.yaml").write_text(_RULE_TESTS)
    result = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout



def test_every_alert_reads_a_metric_the_operator_or_kube_state_metrics_exports(chart):
    """Each alert's metric is one the operator serves (tokenscale.observability) or, for Degraded, the
    chart's kube-state-metrics config exports from fields the CRD has."""
    served = {sample.name for family in OperatorMetrics().registry.collect() for sample in family.samples}
    served |= {family.name + suffix for family in OperatorMetrics().registry.collect() for suffix in ("", "_total")}
    objects = render(chart, SCENARIOS["monitoring"])
    (config_map,) = [o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"].endswith("kube-state-metrics")]
    config = yaml.safe_load(config_map["data"]["tokenscale.yaml"])
    assert config["kind"] == "CustomResourceStateMetrics"
    (resource,) = config["spec"]["resources"]
    assert resource["groupVersionKind"] == {"group": "tokenscale.io", "version": "v1alpha1", "kind": "InferenceService"}
    exported = {f"{resource['metricNamePrefix']}_{m['name']}": m["each"]["gauge"] for m in resource["metrics"]}
    alerts = [r for g in rule_groups(chart)["groups"] for r in g["rules"] if "alert" in r]
    from_operator = [a for a in alerts if not a["expr"].startswith("tokenscale_inferenceservice_")]
    assert {a["alert"] for a in from_operator} == {
        "TokenscaleMetricsUnavailable", "TokenscaleScalingLimited", "TokenscalePrometheusQueriesFailing",
        "TokenscaleAutoscalerBehind"}
    for alert in from_operator:
        import re

        for metric in set(re.findall(r"tokenscale_[a-z_]+", alert["expr"])):
            assert metric in served, metric
    alerts = [a for a in alerts if a not in from_operator]
    assert [a["alert"] for a in alerts] == ["TokenscaleDegraded"]
    for alert in alerts:
        assert alert["expr"].split("{")[0] in exported
    crd_status = yaml.safe_load((REPO / "crds" / "tokenscale.io_inferenceservices.yaml").read_text())[
        "spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    condition = exported["tokenscale_inferenceservice_status_condition"]
    assert condition["path"] == ["status", "conditions"]
    fields = crd_status["conditions"]["items"]["properties"]
    assert {"type", "reason", "status"} <= set(fields) and fields["status"]["enum"] == ["True", "False", "Unknown"]
    for gauge in exported.values():
        if gauge["path"] != ["status", "conditions"]:
            assert gauge["path"][0] == "status" and gauge["path"][1] in crd_status
    # The condition types the alerts name are the ones the API documents.
    documented = crd_status["conditions"]["items"]["properties"]["type"]["description"]
    for alert in alerts:
        assert alert["expr"].split('type="')[1].split('"')[0] in documented


def test_the_image_runs_the_operator_as_the_chart_expects(chart):
    """operator/Dockerfile and the chart agree: numeric non-root user, `tokenscale run`, only what it copies."""
    dockerfile = (REPO / "operator" / "Dockerfile").read_text()
    final_stage = dockerfile.split("\nFROM ")[-1]
    user = [line.split()[1] for line in final_stage.splitlines() if line.startswith("USER ")]
    assert user == ["65532:65532"]
    assert 'ENTRYPOINT ["tokenscale"]' in final_stage and 'CMD ["run"]' in final_stage
    pod = one(render(chart, {}), "Deployment")["spec"]["template"]["spec"]
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (65532, 65532)
    assert pod["containers"][0]["args"] == ["run"]
    # No extras: the operator image never pulls the batching server's torch.
    assert "RUN pip install . " in dockerfile and ".[" not in dockerfile
    for line in dockerfile.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), source
                # The build context sends only what the Dockerfile copies.
                assert f"!{source.rstrip('/')}" in (REPO / "operator" / "Dockerfile.dockerignore").read_text()
