"""The Kubernetes manifests in deploy/kubernetes: valid against the Kubernetes API's
schemas (strict: an unknown field is an error), and consistent with the gateway they
run: the configuration they give it passes the binary's own `check-config`, and the
probes, ports and grace period agree with that configuration.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from support.gateway import gateway_binary

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((REPO_ROOT / "deploy" / "kubernetes").glob("*.yaml"))
# The oldest Kubernetes version the manifests are meant for.
KUBERNETES_VERSION = "1.29.0"


def documents():
    for path in MANIFESTS:
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                yield path.name, document


def by_kind(kind: str, name: str | None = None) -> dict:
    found = [d for _, d in documents() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"one {kind} {name or ''} expected, found {len(found)}"
    return found[0]


def test_there_are_manifests_for_every_part():
    kinds = sorted({d["kind"] for _, d in documents()})
    assert kinds == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Secret", "Service"]


@pytest.mark.parametrize("name,document", list(documents()), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_each_manifest_is_valid_against_the_kubernetes_schemas(name, document):
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def environment(deployment: dict, secret: dict) -> dict:
    """The container's environment as a pod would get it (pod name and IP made up)."""
    fields = {"metadata.name": "charge-point-gateway-7d9f-abcde", "status.podIP": "10.0.0.5"}
    env = {}
    for variable in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "value" in variable:
            value = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], variable["value"])
        elif "fieldRef" in variable["valueFrom"]:
            value = fields[variable["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            ref = variable["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"]
            value = secret["stringData"][ref["key"]]
        env[variable["name"]] = value
    return env


def test_the_configuration_they_give_the_gateway_is_valid(tmp_path):
    config_map = by_kind("ConfigMap")
    deployment = by_kind("Deployment")
    secret = by_kind("Secret")
    config = tmp_path / "gateway.toml"
    config.write_text(config_map["data"]["gateway.toml"])
    env = {k: v for k, v in environment(deployment, secret).items() if k.startswith("CPGW_")}
    checked = subprocess.run(
        [str(gateway_binary()), "check-config", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr
    effective = tomllib.loads(checked.stdout)
    assert effective["node_id"] == "charge-point-gateway-7d9f-abcde"
    assert effective["cluster"]["advertise_url"] == "http://10.0.0.5:9400"
    assert effective["cluster"]["internal_token"] == "(set)", "secrets are not printed"
    assert effective["auth"]["credentials_store"] == "redis"


def test_probes_ports_and_grace_period_agree_with_the_configuration():
    config = tomllib.loads(by_kind("ConfigMap")["data"]["gateway.toml"])
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    port_of = lambda address: int(address.rsplit(":", 1)[1])  # noqa: E731
    assert ports["ocpp"] == port_of(config["listener"]["address"])
    assert ports["admin"] == port_of(config["admin"]["address"])
    assert ports["metrics"] == port_of(config["metrics"]["address"])
    assert ports["internal"] == port_of(config["cluster"]["internal_address"])
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "admin"}
    drain = int(config["shutdown"]["drain_time"].rstrip("s"))
    assert pod["terminationGracePeriodSeconds"] > drain
    internal = by_kind("Service", "charge-point-gateway-internal")
    assert internal["spec"]["clusterIP"] == "None", "headless: one address per pod"
    assert by_kind("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
