"""The chart's activator: rendered, validated strictly, least-privilege RBAC, wired to the operator."""

from __future__ import annotations

import os
from unittest import mock

import helm_python
import pytest

from tests.unit.test_chart import CHART, NAMESPACE, RELEASE, by_kind, render, validate_builtin
from tokenscale.activation import ACTIVATOR_PORT_NAME, ACTIVATOR_SERVICE_ENV, activator_service_from_env
from tokenscale.cli import build_parser
from tokenscale.commands.activator import config_from_args

ON = {"activator": {"enabled": True}}
SCENARIOS = {
    "cluster-wide": ON,
    "namespaced": {**ON, "watchNamespaces": ["team-a", "team-b"]},
    "network-policy": {"activator": {"enabled": True, "networkPolicy": {
        "enabled": True, "clients": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}]}},
        "networkPolicy": {"apiServerCIDRs": ["10.0.0.1/32"]}},
    "tuned": {"activator": {"enabled": True, "replicas": 3, "maxHeldRequests": 20, "holdTimeoutSeconds": 120,
                            "heartbeatSeconds": 2, "retryAfterSeconds": 5}},
}
NAME = f"{RELEASE}-activator"


@pytest.fixture(scope="module")
def chart():
    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


def component(objects, kind: str, name: str):
    (found,) = [o for o in by_kind(objects, kind) if o["metadata"]["name"] == name]
    return found


def env_of(container) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_lint_and_every_object_validates_strictly(chart, scenario) -> None:
    report = helm_python.lint(CHART, SCENARIOS[scenario], strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report
    for obj in render(chart, SCENARIOS[scenario]):
        if obj["kind"] != "CustomResourceDefinition":
            validate_builtin(obj)  # kubernetes-validate, strict: unknown fields rejected


def test_off_by_default(chart) -> None:
    objects = render(chart, {})
    assert not [o for o in objects if "activator" in o["metadata"]["name"]]
    operator = one_deployment(objects, RELEASE)
    assert ACTIVATOR_SERVICE_ENV not in env_of(operator["spec"]["template"]["spec"]["containers"][0])


def one_deployment(objects, name):
    return component(objects, "Deployment", name)


def test_two_hardened_replicas_a_pdb_and_settings_the_command_reads(chart) -> None:
    objects = render(chart, SCENARIOS["tuned"])
    deployment = one_deployment(objects, NAME)
    assert deployment["spec"]["replicas"] == 3 and one_deployment(render(chart, ON), NAME)["spec"]["replicas"] == 2
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["activator"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = env_of(container)
    with mock.patch.dict(os.environ, env, clear=True):  # the names are the command's real flags
        args = build_parser("activator").parse_args(["activator"])
    config = config_from_args(args)
    assert (config.max_held_requests, config.hold_timeout_seconds, config.heartbeat_seconds,
            config.retry_after_seconds) == (20, 120.0, 2.0, 5)
    assert args.port == 8080 and args.admin_port == 9090
    pdb = component(objects, "PodDisruptionBudget", NAME)
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


def test_the_operator_finds_the_activators_service_and_port(chart) -> None:
    objects = render(chart, ON)
    service = component(objects, "Service", NAME)
    assert ACTIVATOR_PORT_NAME in [p["name"] for p in service["spec"]["ports"]]
    operator = one_deployment(objects, RELEASE)["spec"]["template"]["spec"]["containers"][0]
    with mock.patch.dict(os.environ, env_of(operator), clear=True):
        assert activator_service_from_env() == (NAMESPACE, NAME)
    pod_labels = one_deployment(objects, NAME)["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels.get(k) == v for k, v in service["spec"]["selector"].items())


def test_rbac_is_least_privilege(chart) -> None:
    objects = render(chart, ON)
    role = component(objects, "ClusterRole", NAME)
    assert role["rules"] == [
        {"apiGroups": ["tokenscale.io"], "resources": ["inferenceservices"], "verbs": ["list", "patch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list"]},
    ]
    binding = component(objects, "ClusterRoleBinding", NAME)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]
    operator_rules = component(objects, "ClusterRole", RELEASE)["rules"]
    assert {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
            "verbs": ["create", "patch", "delete"]} in operator_rules
    reader = component(objects, "Role", f"{NAME}-endpoints")
    assert reader["metadata"]["namespace"] == NAMESPACE and reader["rules"][0]["verbs"] == ["list"]
    # Without the activator the operator has no EndpointSlice rights at all.
    plain = component(render(chart, {}), "ClusterRole", RELEASE)["rules"]
    assert not [r for r in plain if "endpointslices" in r["resources"]]


def test_namespaced_mode_binds_roles_in_the_watched_namespaces_only(chart) -> None:
    objects = render(chart, SCENARIOS["namespaced"])
    assert not [o for o in by_kind(objects, "ClusterRole") if o["metadata"]["name"] == NAME]
    roles = [o for o in by_kind(objects, "Role") if o["metadata"]["name"] == NAME]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    container = one_deployment(objects, NAME)["spec"]["template"]["spec"]["containers"][0]
    assert env_of(container)["TOKENSCALE_ACTIVATOR_NAMESPACE"] == "team-a,team-b"


def test_network_policy_admits_clients_and_reaches_serving_pods_only(chart) -> None:
    policy = component(render(chart, SCENARIOS["network-policy"]), "NetworkPolicy", NAME)
    proxy_in, admin_in = policy["spec"]["ingress"]
    assert proxy_in["from"] == [{"namespaceSelector": {"matchLabels": {"team": "a"}}}]
    assert admin_in["ports"] == [{"port": 9090, "protocol": "TCP"}]
    dns, api, serving = policy["spec"]["egress"]
    assert api["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    assert serving["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/managed-by"] == "tokenscale"


@pytest.mark.parametrize(("values", "message"), [
    ({"activator": {"enabled": True, "maxHeldRequests": 0}}, "maxHeldRequests"),
    ({"activator": {"enabled": True, "holdTimeout": 5}}, "holdTimeout"),
])
def test_bad_values_are_rejected(chart, values, message) -> None:
    with pytest.raises(helm_python.HelmError, match=message):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
