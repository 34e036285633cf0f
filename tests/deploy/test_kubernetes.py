"""deploy/kubernetes/ against the Kubernetes JSON schemas (kubernetes-validate, offline,
strict: unknown fields fail), and the properties the manifests promise to each other."""

from __future__ import annotations

import copy
import json
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource

from service import serve
from service.admission import MODEL_ENDPOINTS
from service.docs import DOCS_ASSETS_URL
from service.feedback import PostgresFeedbackStore, open_store
from service.limits import BodyLimits
from service.main import create_app
from service.metrics import create_metrics
from service.settings import Settings
from tests.deploy.dockerfile import ROOT

MANIFESTS = ROOT / "deploy" / "kubernetes"
# The oldest release these manifests target (autoscaling/v2, policy/v1 PDB, sleep via exec)
# and the newest the validator knows.
VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]
NOT_KUBERNETES = {"kustomization.yaml", "inferenceservice.yaml"}
SECRET_EXAMPLE = "feedback-db-secret.example.yaml"
KEYS_EXAMPLE = "api-keys-secret.example.yaml"
INGRESS_EXAMPLE = "ingress.example.yaml"
ENTRY_VARIABLES = set(serve.ENVIRONMENT)
# Fields of a KServe predictor that are not PodSpec fields (ComponentExtensionSpec).
KSERVE_PREDICTOR_EXTENSIONS = {
    "minReplicas",
    "maxReplicas",
    "scaleTarget",
    "scaleMetric",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "logger",
    "batcher",
    "labels",
    "annotations",
    "deploymentStrategy",
}


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]


def all_resources() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, document)
        for path in sorted(MANIFESTS.glob("*.yaml"))
        if path.name not in NOT_KUBERNETES
        for document in documents(path.name)
    ]


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in all_resources() if d["kind"] == kind}


def validate_definition(instance: Any, definition: str, version: str) -> None:
    """Validate against one strict definition schema, e.g. ``podspec-v1``."""
    directory = f"kubernetes-json-schema/v{version}-local-strict"
    schema = schema_contents(f"{directory}/{definition}.json", version)
    definitions = schema_contents(f"{directory}/_definitions.json", version)
    registry: Registry[Any] = Resource.from_contents(schema) @ Registry()
    registry = Resource.from_contents(definitions) @ registry
    jsonschema.validators.Draft202012Validator(schema, registry=registry).validate(instance)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("name", "resource"), all_resources(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_manifest_matches_the_kubernetes_schema(
    name: str, resource: dict[str, Any], version: str
) -> None:
    kubernetes_validate.validate(resource, version, strict=True)


def test_validator_is_alive() -> None:
    (deployment,) = documents("deployment.yaml")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)
    broken = copy.deepcopy(deployment)
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_every_kind_the_issue_asks_for_is_there() -> None:
    kinds = {d["kind"] for _, d in all_resources()}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
    } <= kinds
    assert documents("inferenceservice.yaml")[0]["kind"] == "InferenceService"


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("name", ["vision", "vision-gpu"])
def test_probes_resources_and_drain(name: str) -> None:
    deployment = by_kind("Deployment")[name]
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert container["startupProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["limits"]["memory"]
    # terminationGracePeriodSeconds > preStop pause + drain after SIGTERM
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    settings = by_kind("ConfigMap")["vision-settings"]["data"]
    drain = int(settings["GRACEFUL_SHUTDOWN_S"])
    assert pod["terminationGracePeriodSeconds"] > pause + drain
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False  # no VISION_SERVICE_HOST... beside the settings
    # A new pod is ready before an old one goes: a pool at one replica keeps serving.
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert (rolling["maxUnavailable"], rolling["maxSurge"]) == (0, 1)
    assert container["envFrom"] == [{"configMapRef": {"name": "vision-settings"}}]


def test_gpu_variant_requests_a_gpu() -> None:
    container = _container(by_kind("Deployment")["vision-gpu"])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VISION_PROVIDERS"] == "cuda"
    cpu = _container(by_kind("Deployment")["vision"])
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]


def test_selectors_match_the_pods() -> None:
    deployments = by_kind("Deployment")
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in deployments.values()]
    for deployment in deployments.values():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for service in by_kind("Service").values():
        matched = [
            labels for labels in pod_labels if service["spec"]["selector"].items() <= labels.items()
        ]
        assert len(matched) == 1, service["metadata"]["name"]
        assert service["spec"]["ports"][0]["targetPort"] == "http"
    for pdb in by_kind("PodDisruptionBudget").values():
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert len([lb for lb in pod_labels if selector.items() <= lb.items()]) == 1


def test_autoscalers() -> None:
    deployments = by_kind("Deployment")
    hpas = by_kind("HorizontalPodAutoscaler")
    for hpa in hpas.values():
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
    (cpu_metric,) = hpas["vision"]["spec"]["metrics"]
    assert cpu_metric["resource"]["name"] == "cpu"
    (custom,) = hpas["vision-gpu"]["spec"]["metrics"]
    gauge = create_metrics().in_flight._name
    assert custom["type"] == "Pods" and custom["pods"]["metric"]["name"] == gauge
    # The adapter rule exposes that very series under that name.
    (adapter,) = documents("prometheus-adapter-rules.yaml")
    kubernetes_validate.validate(adapter, VERSIONS[-1], strict=True)
    (rule,) = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert rule["seriesQuery"].startswith(gauge + "{")
    assert rule["name"]["as"] == gauge
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


def test_configmap_holds_only_real_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    data = by_kind("ConfigMap")["vision-settings"]["data"]
    fields = {f"VISION_{name.upper()}" for name in Settings.model_fields}
    assert set(data) <= fields | ENTRY_VARIABLES
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    # Thread counts are left to each pod's cgroup quota: the CPU and GPU Deployments read
    # this one ConfigMap with different CPU limits.
    cpu_limits = {
        _container(by_kind("Deployment")[name])["resources"]["limits"]["cpu"]
        for name in ("vision", "vision-gpu")
    }
    assert len(cpu_limits) == 2
    assert settings.intra_op_threads is None and settings.decode_threads is None


def test_kustomization_lists_existing_manifests() -> None:
    (kustomization,) = documents("kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (MANIFESTS / resource).is_file()
    expected = {p.name for p in MANIFESTS.glob("*.yaml")} - NOT_KUBERNETES
    assert set(kustomization["resources"]) == expected - {
        "prometheus-adapter-rules.yaml",
        SECRET_EXAMPLE,  # real credentials are made with kubectl, not applied from git
        KEYS_EXAMPLE,
        INGRESS_EXAMPLE,  # the class, host and certificate are the cluster's
    }


def _routed(path: str, rules: list[dict[str, Any]]) -> bool:
    """Whether an Ingress path rule matches ``path`` (Kubernetes' Prefix matches whole
    path elements: /docs matches /docs/x, not /docsx)."""
    for rule in rules:
        if rule["pathType"] == "Exact" and path == rule["path"]:
            return True
        prefix = rule["path"].rstrip("/")
        if rule["pathType"] == "Prefix" and (path == prefix or path.startswith(prefix + "/")):
            return True
    return False


def test_the_example_ingress_routes_the_api_and_not_metrics() -> None:
    """/metrics is open without a key in these manifests (for Prometheus); the NetworkPolicy
    admits the ingress controller to every path, so the Ingress must not route it. Every
    other operation, the docs and /ui are routed, to the CPU pool's Service."""
    (ingress,) = documents(INGRESS_EXAMPLE)
    (rule,) = ingress["spec"]["rules"]
    paths = rule["http"]["paths"]
    assert {p["backend"]["service"]["name"] for p in paths} == {"vision"}
    assert {p["backend"]["service"]["port"]["name"] for p in paths} == {"http"}
    app = create_app(Settings(model_repository=ROOT / "models" / "repository"))
    operations = [path.replace("{", "").replace("}", "") for path in app.openapi()["paths"]]
    public = [*operations, "/docs", "/redoc", "/openapi.json", "/ui", "/ui/static/ui.js"]
    public.append(DOCS_ASSETS_URL + "/swagger-ui-bundle.js")
    assert "/metrics" in public
    assert [path for path in public if not _routed(path, paths)] == ["/metrics"]
    (configmap,) = documents("configmap.yaml")
    assert configmap["data"]["VISION_METRICS_REQUIRE_KEY"] == "false"
    # nginx must pass the largest body any routed path takes (two uploads on
    # /faces/verify): a smaller one gets nginx's HTML 413 where the service would answer.
    limits = BodyLimits(
        int(configmap["data"]["VISION_MAX_UPLOAD_BYTES"]), form_paths=MODEL_ENDPOINTS
    )
    body = max(limits.for_path(path) for path in public)
    assert body > limits.for_path("/recognize")
    limit = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert limit.endswith("m") and int(limit[:-1]) * 2**20 >= body


def test_every_replica_takes_the_feedback_database_url_from_the_secret() -> None:
    """Replicas must share one teacher-record store: the URL comes from a Secret (never the
    ConfigMap), in both Deployments and the InferenceService."""
    (secret,) = documents(SECRET_EXAMPLE)
    assert secret["kind"] == "Secret"
    url = secret["stringData"]["url"]
    assert isinstance(open_store(url), PostgresFeedbackStore)
    (inference,) = documents("inferenceservice.yaml")
    containers = [_container(d) for d in by_kind("Deployment").values()]
    containers += inference["spec"]["predictor"]["containers"]
    for container in containers:
        env = {e["name"]: e for e in container["env"]}
        reference = env["VISION_FEEDBACK_URL"]["valueFrom"]["secretKeyRef"]
        assert reference == {"name": secret["metadata"]["name"], "key": "url"}
        assert "optional" not in reference  # no Secret, no pod: never a silent per-pod file
        # The image's user has no home directory, so libpq never finds its default CA
        # file: the URL names one, and every pod mounts it there.
        ca_file = parse_qs(urlsplit(url).query)["sslrootcert"][0]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts[str(PurePosixPath(ca_file).parent)] == "feedback-db-ca"
    for pod in [d["spec"]["template"]["spec"] for d in by_kind("Deployment").values()] + [
        inference["spec"]["predictor"]
    ]:
        volume = {v["name"]: v for v in pod["volumes"]}["feedback-db-ca"]
        assert volume["secret"]["secretName"] == "vision-feedback-db-ca"
    data = by_kind("ConfigMap")["vision-settings"]["data"]
    assert "VISION_FEEDBACK_URL" not in data
    # A Secret whose URL is blank or names SQLite stops the pod too.
    assert data["VISION_FEEDBACK_REQUIRE_SHARED"] == "true"
    assert "VISION_FEEDBACK_DB" not in data
    assert inference["spec"]["predictor"]["enableServiceLinks"] is False


def test_every_replica_requires_api_keys_from_the_secret() -> None:
    """Shipped open, anyone reaching a pod (or a web page a user opens, by a cross-site
    form POST) stored teacher records and reloaded models. The keys come from a Secret the
    pod cannot start without; the example's values are JSON lists the service accepts."""
    (secret,) = documents(KEYS_EXAMPLE)
    keys = {name: json.loads(value) for name, value in secret["stringData"].items()}
    settings = Settings(
        api_keys=keys["keys"],
        admin_api_keys=keys["admin-keys"],
        feedback_api_keys=keys["feedback-keys"],
    )
    assert settings.api_keys and settings.admin_api_keys and settings.feedback_api_keys
    (inference,) = documents("inferenceservice.yaml")
    containers = [_container(d) for d in by_kind("Deployment").values()]
    containers += inference["spec"]["predictor"]["containers"]
    for container in containers:
        env = {e["name"]: e for e in container["env"]}
        for variable, key in (("VISION_API_KEYS", "keys"), ("VISION_ADMIN_API_KEYS", "admin-keys")):
            reference = env[variable]["valueFrom"]["secretKeyRef"]
            assert reference == {"name": secret["metadata"]["name"], "key": key}
        # Optional: a Secret made before feedback keys existed still starts the pod.
        reference = env["VISION_FEEDBACK_API_KEYS"]["valueFrom"]["secretKeyRef"]
        assert reference == {"name": secret["metadata"]["name"], "key": "feedback-keys"} | {
            "optional": True
        }
    data = by_kind("ConfigMap")["vision-settings"]["data"]
    assert "VISION_API_KEYS" not in data
    # /metrics is scraped without a key, from the monitoring namespace only.
    assert data["VISION_METRICS_REQUIRE_KEY"] == "false"
    assert int(data["VISION_FEEDBACK_MAX_RECORDS"]) > 0
    (policy,) = by_kind("NetworkPolicy").values()
    pod_labels = by_kind("Deployment")["vision"]["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    (rule,) = policy["spec"]["ingress"]
    namespaces = {
        p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in rule["from"]
    }
    assert namespaces == {"ingress-nginx", "monitoring"}
    # Every pod the policy selects (KServe's carry the InferenceService's labels) is
    # admitted on the port it serves, whatever that port is named there.
    (isvc,) = documents("inferenceservice.yaml")
    assert (
        policy["spec"]["podSelector"]["matchLabels"].items() <= isvc["metadata"]["labels"].items()
    )
    containers = [isvc["spec"]["predictor"]["containers"][0]] + [
        d["spec"]["template"]["spec"]["containers"][0] for d in by_kind("Deployment").values()
    ]
    served = {port["containerPort"] for c in containers for port in c["ports"]}
    assert [port["port"] for port in rule["ports"]] == sorted(served) == [8000]


@pytest.mark.parametrize("version", VERSIONS)
def test_kserve_inference_service(version: str) -> None:
    (service,) = documents("inferenceservice.yaml")
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert set(service) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(service["spec"]) == {"predictor"}
    predictor = dict(service["spec"]["predictor"])
    extensions = {k: predictor.pop(k) for k in list(predictor) if k in KSERVE_PREDICTOR_EXTENSIONS}
    assert extensions["minReplicas"] <= extensions["maxReplicas"]
    # What remains is the predictor's PodSpec: validate it as one.
    validate_definition(predictor, "podspec-v1", version)
    validate_definition(service["metadata"], "objectmeta-meta-v1", version)
    assert predictor["securityContext"]["runAsNonRoot"] is True
    assert predictor["automountServiceAccountToken"] is False
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["ports"][0]["containerPort"] == 8000


def test_manifests_are_plain_yaml_files() -> None:
    for path in MANIFESTS.iterdir():
        assert path.suffix == ".yaml", path


def test_a_deployment_an_hpa_scales_sets_no_replica_count() -> None:
    """A count in the Deployment resets the HPA's on every ``kubectl apply``."""
    resources = all_resources()
    scaled = {
        document["spec"]["scaleTargetRef"]["name"]
        for _, document in resources
        if document["kind"] == "HorizontalPodAutoscaler"
    }
    deployments = {d["metadata"]["name"]: d for _, d in resources if d["kind"] == "Deployment"}
    assert scaled and scaled <= set(deployments)
    for name in scaled:
        assert "replicas" not in deployments[name]["spec"], name
