"""The container runs as a non-root user with a read-only root filesystem, writable only
where the service writes: the feedback database's directory (/app/var) and /tmp (the
multipart parser spools uploads over VISION_UPLOAD_SPOOL_BYTES there). Checked on the
files: the Dockerfile, docker-compose.yml and every pod of deploy/kubernetes/ (Deployments
and the KServe InferenceService). Nothing here starts a container (no engine on these machines)."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import pytest
import yaml

from tests.deploy.dockerfile import ROOT, env, lineage, parse

COMPOSE = ROOT / "docker-compose.yml"
MANIFESTS = ROOT / "deploy" / "kubernetes"
# Where the service may write: the feedback database's directory and the temp directory.
WRITABLE = {"/app/var", "/tmp"}
FINAL_TARGETS = ["cpu", "gpu"]


def _documents(path: Any) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def our_compose_services() -> dict[str, dict[str, Any]]:
    """The compose services built from this repository's Dockerfile."""
    compose: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("build", {}).get("dockerfile") == "docker/Dockerfile"
    }


def our_pods() -> dict[str, dict[str, Any]]:
    """Pod specs running this image: every Deployment's template and the KServe predictor."""
    pods: dict[str, dict[str, Any]] = {}
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for document in _documents(path):
            if document.get("kind") == "Deployment":
                pods[f"Deployment/{document['metadata']['name']}"] = document["spec"]["template"][
                    "spec"
                ]
            elif document.get("kind") == "InferenceService":
                pods[f"InferenceService/{document['metadata']['name']}"] = document["spec"][
                    "predictor"
                ]
    return pods


def test_there_is_something_to_check() -> None:
    assert set(our_compose_services()) >= {"vision", "vision-gpu"}
    assert {"Deployment/vision", "Deployment/vision-gpu", "InferenceService/vision"} <= set(
        our_pods()
    )


@pytest.mark.parametrize("target", FINAL_TARGETS)
def test_image_owns_nothing_but_its_data_directory(target: str) -> None:
    chain = lineage(parse(), target)
    runs = " ".join(args for stage in chain for args in stage.all("RUN"))
    # The app user owns /app/var only; code, venv and models stay root's (read-only to it).
    assert "chown app:app /app/var" in runs and runs.count("chown") == 1
    copies = [args for stage in chain for args in stage.all("COPY")]
    assert all("--chown=" not in c or "--chown=root:root" in c for c in copies)
    variables = env(chain)
    feedback_dir = str(PurePosixPath(variables["VISION_FEEDBACK_DB"]).parent)
    assert feedback_dir == "/app/var"
    volumes = " ".join(args for stage in chain for args in stage.all("VOLUME"))
    assert "/app/var" in volumes
    # No bytecode written next to the read-only code at run time.
    assert variables["PYTHONDONTWRITEBYTECODE"] == "1"


@pytest.mark.parametrize("name", sorted(our_compose_services()))
def test_compose_service_is_non_root_with_a_read_only_root(name: str) -> None:
    service = our_compose_services()[name]
    assert service["read_only"] is True
    uid = str(service["user"]).split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    assert "ALL" in service["cap_drop"]
    assert "no-new-privileges:true" in service["security_opt"]
    tmpfs = {entry.split(":")[0] for entry in service["tmpfs"]}
    assert tmpfs == {"/tmp"}
    for mount in service.get("volumes", []):
        _source, target, *mode = mount.split(":")
        assert target in WRITABLE or mode == ["ro"], f"{name}: writable mount {mount}"
    environment = service.get("environment", {})
    if "VISION_FEEDBACK_DB" in environment:
        assert str(PurePosixPath(environment["VISION_FEEDBACK_DB"]).parent) == "/app/var"


@pytest.mark.parametrize("name", sorted(our_pods()))
def test_pod_is_non_root_with_a_read_only_root(name: str) -> None:
    pod = our_pods()[name]
    pod_context = pod.get("securityContext", {})
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert (context.get("runAsNonRoot") or pod_context.get("runAsNonRoot")) is True
        assert (context.get("runAsUser") or pod_context.get("runAsUser")) not in (None, 0)
        mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
        assert set(mounts) >= WRITABLE, f"{name}: {sorted(mounts)}"
        for path, mount in mounts.items():
            assert path in WRITABLE or mount.get("readOnly") is True, f"{name}: {path}"
            # Scratch or a claim, never the node's filesystem.
            assert "hostPath" not in volumes[mount["name"]]
