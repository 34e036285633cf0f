"""create_app's checks at start: a teacher-record store that must be shared, and what it
says about the configuration (names that are no setting, whether keys are required)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.serving import MisconfiguredEndpoint
from tests.service.conftest import make_settings

POSTGRES_URL = "postgresql://vision:secret@db.invalid:5432/vision"  # never connected here


@pytest.mark.parametrize("url", [None, "", "  ", "sqlite:///tmp/records.sqlite3"])
def test_a_store_that_must_be_shared_refuses_a_file_of_its_own(repo: Path, url: str | None) -> None:
    """With FEEDBACK_REQUIRE_SHARED (the Kubernetes ConfigMap sets it) a URL that is unset,
    blank (a Secret made from an empty variable) or SQLite stops the start, instead of
    keeping each pod's records in a file lost with the pod."""
    settings = make_settings(repo, feedback_url=url, feedback_require_shared=True)
    with pytest.raises(ValueError, match="VISION_FEEDBACK_URL to the PostgreSQL database"):
        create_app(settings)


def test_a_shared_store_or_no_requirement_starts(repo: Path) -> None:
    shared = make_settings(repo, feedback_url=POSTGRES_URL, feedback_require_shared=True)
    assert create_app(shared).state.feedback_store.backend == "postgresql"
    # Without the requirement a blank URL still means the SQLite file (compose's "${VAR:-}").
    assert create_app(make_settings(repo, feedback_url="")).state.feedback_store.backend == (
        "sqlite"
    )


def test_names_that_are_no_setting_are_warned_of(
    repo: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("VISION_API_KEY", '["k"]')
    with caplog.at_level(logging.INFO, logger="service"):
        create_app(make_settings(repo))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "VISION_API_KEY is not a setting and is ignored; did you mean VISION_API_KEYS?" in (
        warned
    )


@pytest.mark.parametrize(
    ("keys", "admin", "feedback", "level", "text"),
    [
        ([], [], [], logging.WARNING, "may store teacher records and reload models"),
        ([], ["a"], [], logging.WARNING, "reload models only with one of 1 admin keys"),
        ([], [], ["f"], logging.WARNING, "teacher records only with one of 1 feedback keys"),
        (["k", "l"], ["a"], [], logging.INFO, "3 keys, 1 of them admin, 0 feedback (any key"),
        (["k"], [], ["f", "g"], logging.INFO, "3 keys, 0 of them admin, 2 feedback;"),
    ],
)
def test_the_start_says_whether_keys_are_required(
    repo: Path,
    caplog: pytest.LogCaptureFixture,
    keys: list[str],
    admin: list[str],
    feedback: list[str],
    level: int,
    text: str,
) -> None:
    settings = make_settings(repo, api_keys=keys, admin_api_keys=admin, feedback_api_keys=feedback)
    with caplog.at_level(logging.INFO, logger="service"):
        create_app(settings)
    assert any(r.levelno == level and text in r.getMessage() for r in caplog.records)


COMMITTED = Path(__file__).resolve().parents[2] / "models" / "repository"


@pytest.mark.parametrize(
    ("setting", "model", "paths"),
    [
        ("recognize_model", "gender", "/recognize needs a landmark_points model"),
        ("attention_model", "landmark", "/attention and /attention/correct need"),
        ("gender_model", "occlusion", "/gender needs a gender_contour model"),
        ("occlusion_model", "attention", "/occlusion and /faces/verify need"),
    ],
)
def test_an_endpoint_sent_to_a_model_of_another_task_stops_the_start(
    setting: str, model: str, paths: str
) -> None:
    """Served on, every request to those routes was a 503 'not ready' with Retry-After, for
    good, while /health/ready said 200 and the log said nothing (found by a review)."""
    settings = make_settings(COMMITTED, **{setting: model})
    with pytest.raises(MisconfiguredEndpoint) as refused, TestClient(create_app(settings)):
        pass
    assert f"VISION_{setting.upper()} names '{model}'" in str(refused.value)
    assert paths in str(refused.value)


def test_an_endpoint_whose_model_is_not_served_is_warned_of(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server of some models answers the others' routes 404; the start says which."""
    with (
        caplog.at_level(logging.WARNING, logger="service"),
        TestClient(create_app(make_settings(repo))),
    ):
        pass
    warned = [r.getMessage() for r in caplog.records if "will answer 404" in r.getMessage()]
    assert any(
        w.startswith("/gender will answer 404: VISION_GENDER_MODEL names 'gender'") for w in warned
    )
    assert not any(w.startswith("/recognize ") for w in warned)  # the fake landmark is served
