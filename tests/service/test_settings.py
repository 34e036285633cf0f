from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import DEFAULT_MODEL_REPOSITORY, Settings, available_cpus, get_settings


def test_defaults() -> None:
    settings = Settings()
    assert settings.model_repository == DEFAULT_MODEL_REPOSITORY
    assert settings.model_repository.is_absolute()
    assert settings.model_repository.parts[-2:] == ("models", "repository")
    assert settings.providers == "auto" and settings.api_keys == []
    assert settings.max_upload_bytes == 20 * 1024 * 1024
    assert settings.max_image_pixels == 40_000_000
    assert settings.resolved_intra_op_threads() == available_cpus()


def test_environment_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VISION_MODEL_REPOSITORY", str(tmp_path))
    monkeypatch.setenv("VISION_MODEL_VERSIONS", '{"landmark": "1"}')
    monkeypatch.setenv("VISION_MODELS", '["landmark"]')
    monkeypatch.setenv("VISION_PROVIDERS", "cpu")
    monkeypatch.setenv("VISION_API_KEYS", '["a", "b"]')
    monkeypatch.setenv("VISION_INTRA_OP_THREADS", "3")
    settings = Settings()
    assert settings.model_repository == tmp_path
    assert settings.model_versions == {"landmark": "1"}
    assert settings.models == ["landmark"]
    assert settings.providers == "cpu" and settings.api_keys == ["a", "b"]
    assert settings.resolved_intra_op_threads() == 3


@pytest.mark.parametrize(("cpus", "threads"), [(1, 1), (2, 1), (16, 15)])
def test_decode_threads_leave_the_event_loop_a_cpu(
    monkeypatch: pytest.MonkeyPatch, cpus: int, threads: int
) -> None:
    monkeypatch.setattr("service.settings.available_cpus", lambda: cpus)
    assert Settings().resolved_decode_threads() == threads
    assert Settings(decode_threads=4).resolved_decode_threads() == 4


def test_get_settings_is_cached() -> None:
    get_settings.cache_clear()
    try:
        assert get_settings() is get_settings()
    finally:
        get_settings.cache_clear()


def test_bad_provider_is_rejected() -> None:
    with pytest.raises(ValueError, match="providers"):
        Settings(providers="tpu")  # type: ignore[arg-type]


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_available_cpus_honours_cgroup_v2_quota(tmp_path: Path) -> None:
    affinity = available_cpus(tmp_path / "none")
    write(tmp_path / "cpu.max", "50000 100000\n")  # half a CPU still needs one thread
    assert available_cpus(tmp_path) == 1
    write(tmp_path / "cpu.max", "max 100000\n")
    assert available_cpus(tmp_path) == affinity


def test_available_cpus_honours_cgroup_v1_quota(tmp_path: Path) -> None:
    write(tmp_path / "cpu" / "cpu.cfs_quota_us", "100000\n")
    write(tmp_path / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert available_cpus(tmp_path) == 1
    write(tmp_path / "cpu" / "cpu.cfs_quota_us", "-1\n")
    assert available_cpus(tmp_path) == available_cpus(tmp_path / "none")


def test_unknown_vision_names_are_found_with_the_setting_they_resemble() -> None:
    """pydantic-settings ignores a VISION_* name that is no setting, so a typo such as
    VISION_API_KEY (for VISION_API_KEYS) would leave the API open without a word."""
    environ = {
        "VISION_API_KEY": '["k"]',
        "vision_max_upload_byte": "1048576",  # names are case-insensitive, as settings are
        "VISION_SOMETHING_ELSE": "1",
        "VISION_API_KEYS": '["k"]',
        "VISION_TESTS_FAIL_ON_SKIP": "1",  # the test suite's, not a setting
        "PATH": "/usr/bin",
    }
    assert Settings.unknown_environment(environ) == {
        "VISION_API_KEY": "VISION_API_KEYS",
        "vision_max_upload_byte": "VISION_MAX_UPLOAD_BYTES",
        "VISION_SOMETHING_ELSE": None,
    }
