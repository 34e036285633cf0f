"""docker-compose.yml against the Compose specification's JSON schema, plus what the issue
asks of it. The schema is the compose-spec one that check-jsonschema (dev extra) vendors:
nothing is fetched at test time."""

from __future__ import annotations

import copy
import json
import re
from importlib.resources import files
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from service import serve
from service.feedback import PostgresFeedbackStore, open_store
from service.settings import Settings
from tests.deploy.dockerfile import ROOT, env, lineage, parse

COMPOSE = ROOT / "docker-compose.yml"
# Environment the entry command reads besides the settings (service/serve.py).
ENTRY_VARIABLES = set(serve.ENVIRONMENT)


# Compose's ${NAME:-default} and ${NAME}, read as docker compose does in `environment`.
INTERPOLATION = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def interpolated(value: str, environment: dict[str, str]) -> str:
    """``value`` with each ${NAME:-default} replaced from ``environment`` (the default when
    unset or empty) and each ${NAME} by its value or ""."""
    return INTERPOLATION.sub(lambda m: environment.get(m.group(1)) or (m.group(2) or ""), value)


def compose_schema() -> dict[str, Any]:
    vendored = files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema: dict[str, Any] = json.loads(vendored.read_text(encoding="utf-8"))
    return schema


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # resolves the << merges
    return document


def test_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    jsonschema.validate(compose, compose_schema())


def test_schema_is_alive(compose: dict[str, Any]) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["vision"]["restart"] = ["always"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, compose_schema())
    broken = copy.deepcopy(compose)
    broken["services"]["vision"]["healthcheck"]["intervall"] = "5s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, compose_schema())


def test_cpu_service_on_8000(compose: dict[str, Any]) -> None:
    vision = compose["services"]["vision"]
    assert "profiles" not in vision  # `docker compose up` starts it
    assert vision["build"] == {"context": ".", "dockerfile": "docker/Dockerfile", "target": "cpu"}
    # Loopback unless BIND says otherwise: no keys are set, so the port must not be public.
    assert vision["ports"] == ["${BIND:-127.0.0.1}:${PORT:-8000}:8000"]
    for service in compose["services"].values():
        for port in service.get("ports", []):
            assert port.startswith("${BIND:-127.0.0.1}:"), port
    assert vision["environment"]["VISION_PROVIDERS"] == "cpu"
    assert vision["restart"] == "unless-stopped"
    assert vision["deploy"]["resources"]["limits"]["memory"]


@pytest.mark.parametrize("name", ["vision", "vision-gpu", "vision-postgres"])
def test_thread_counts_match_each_service_s_cpu_limit(compose: dict[str, Any], name: str) -> None:
    """The GPU service inherited the CPU service's 2 threads with 4 CPUs of its own."""
    service = compose["services"][name]
    cpus = service["deploy"]["resources"]["limits"]["cpus"]
    assert service["environment"]["VISION_INTRA_OP_THREADS"] == cpus
    assert service["environment"]["VISION_DECODE_THREADS"] == cpus


def test_gpu_profile_reserves_an_nvidia_device(compose: dict[str, Any]) -> None:
    gpu = compose["services"]["vision-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["target"] == "gpu"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert device["count"] == 1
    assert gpu["environment"]["VISION_PROVIDERS"] == "cuda"
    # CUDA set-up takes longer than the CPU image's start period, as in Kubernetes.
    assert gpu["healthcheck"]["start_period"] == "120s"
    assert compose["services"]["vision"]["healthcheck"]["start_period"] == "60s"


@pytest.mark.parametrize("name", ["vision", "vision-gpu", "vision-postgres"])
def test_health_volume_and_settings(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    probe = " ".join(service["healthcheck"]["test"])
    assert "/health/ready" in probe and "os.environ.get('PORT'" in probe  # as the image's
    assert service["healthcheck"]["start_period"]
    database = service["environment"]["VISION_FEEDBACK_DB"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in service["volumes"]}
    directory = database.rsplit("/", 1)[0]
    assert mounts[directory] in compose["volumes"], "the feedback DB is on a named volume"
    fields = {f"VISION_{field.upper()}" for field in Settings.model_fields}
    for key in service["environment"]:
        assert key in fields | ENTRY_VARIABLES, f"{key} is not a setting"
    # The values parse as the service will parse them: from the environment, as compose
    # fills them in from the shell's (here: none, then keys).
    shells: list[dict[str, str]] = [{}, {"VISION_API_KEYS": '["k"]'}]
    parsed = []
    for shell in shells:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in service["environment"].items():
                patch.setenv(key, interpolated(str(value), shell))
            parsed.append(Settings())
    # Keys are the shell's or .env's, not edited into this file (which git tracks).
    assert [settings.api_keys for settings in parsed] == [[], ["k"]]
    # Longer than the drain the entry command allows after SIGTERM.
    grace = int(service["stop_grace_period"].removesuffix("s"))
    assert grace > int(service["environment"]["GRACEFUL_SHUTDOWN_S"])


def test_postgres_profile_points_the_service_at_a_healthy_database(
    compose: dict[str, Any],
) -> None:
    database = compose["services"]["postgres"]
    service = compose["services"]["vision-postgres"]
    assert database["profiles"] == service["profiles"] == ["postgres"]
    assert "pg_isready" in " ".join(database["healthcheck"]["test"])
    (mount,) = database["volumes"]
    volume, path = mount.split(":")
    assert volume in compose["volumes"] and path == "/var/lib/postgresql/data"
    assert service["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    # The URL names that service, its user and database; the password is the same variable.
    url = urlsplit(service["environment"]["VISION_FEEDBACK_URL"])
    env = database["environment"]
    assert url.scheme == "postgresql" and url.hostname == "postgres" and url.port == 5432
    assert url.username == env["POSTGRES_USER"] and url.path == "/" + env["POSTGRES_DB"]
    assert url.password == env["POSTGRES_PASSWORD"]
    # No built-in password: an unset POSTGRES_PASSWORD must stay empty (postgres then
    # refuses to start) rather than fall back to one written here.
    assert env["POSTGRES_PASSWORD"] in ("${POSTGRES_PASSWORD}", "${POSTGRES_PASSWORD:-}")
    assert isinstance(open_store(url.geturl()), PostgresFeedbackStore)


def test_compose_and_image_agree_on_paths(compose: dict[str, Any]) -> None:
    image_env = env(lineage(parse(), "cpu"))
    service = compose["services"]["vision"]
    assert service["environment"]["VISION_FEEDBACK_DB"] == image_env["VISION_FEEDBACK_DB"]
    assert service["ports"][0].endswith(f":{image_env['PORT']}")
