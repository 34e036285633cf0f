"""Response bodies; field names are those of /work/shared/API.md."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

# Here and not in service.errors, so this module needs pydantic only: the Python client
# (client/) imports it without the server's dependencies.
PROBLEM_MEDIA_TYPE = "application/problem+json"
# A probability or a product of probabilities: in 0..1 by construction, so the bound is
# stated in the OpenAPI schema for clients, not checked again on every answer.
Score = Annotated[float, Field(json_schema_extra={"minimum": 0.0, "maximum": 1.0})]


class Schema(BaseModel):
    """A response body. Every field is sent, defaults included (null where nothing
    applies), so the OpenAPI schema lists every field as required."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class ModelRef(Schema):
    name: str
    version: str


class ImageSize(Schema):
    """Size of the upload as the caller sees it (after EXIF orientation), in pixels."""

    width: int
    height: int


class Point(Schema):
    """Image pixels, origin top-left, x right, y down."""

    x: float
    y: float


class Landmark(Schema):
    class_id: int
    label: str
    score: Score
    point: Point


class MapExtent(Schema):
    """The rectangle a map covers, in image pixels (beyond the image where the model input
    was letterboxed)."""

    x0: float
    y0: float
    x1: float
    y1: float


class MapPng(Schema):
    """A map in 0..1 (attention, contour) as an 8-bit grey PNG at the map's own resolution,
    value = round(255 * map), with the image-pixel rectangle it covers."""

    width: int
    height: int
    png_base64: str
    extent: MapExtent


class ScoredClass(Schema):
    class_id: int
    label: str
    score: Score


class ClassPrediction(ScoredClass):
    top_k: list[ScoredClass]


_TOP: list[JsonValue] = [
    {"class_id": 3, "label": "dress", "score": 0.91},
    {"class_id": 0, "label": "t_shirt_top", "score": 0.05},
]
_MAP: dict[str, JsonValue] = {
    "width": 16,
    "height": 16,
    "png_base64": "iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAAAAAA6mKC9...",
    "extent": {"x0": 0.0, "y0": -32.0, "x1": 256.0, "y1": 224.0},
}


class AttentionResponse(Schema):
    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "model": {"name": "attention", "version": "1"},
                    "prediction": {"class_id": 3, "label": "dress", "score": 0.91, "top_k": _TOP},
                    "attention_branch": {"class_id": 3, "label": "dress", "score": 0.88},
                    "attention_map": _MAP,
                }
            ]
        },
    )

    model: ModelRef
    prediction: ClassPrediction
    attention_branch: ScoredClass
    attention_map: MapPng


class CorrectionResponse(Schema):
    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "model": {"name": "attention", "version": "1"},
                    "original": {"class_id": 3, "label": "dress", "score": 0.91, "top_k": _TOP},
                    "corrected": {
                        "class_id": 8,
                        "label": "bag",
                        "score": 0.77,
                        "top_k": [{"class_id": 8, "label": "bag", "score": 0.77}],
                    },
                    "attention_map": _MAP,
                    "edited_map": _MAP,
                    "feature_cache": "hit",
                    "feedback_id": "3f2c9b7e0d8a4c1e9b6f5a4d3c2b1a09",
                }
            ]
        },
    )

    model: ModelRef
    original: ClassPrediction
    corrected: ClassPrediction
    attention_map: MapPng
    edited_map: MapPng
    feature_cache: str  # "hit" or "miss": whether the features graph had to run
    # The contract: present only when save was true (and then the record is stored).
    feedback_id: str | None = Field(default=None, exclude_if=lambda value: value is None)


class FeedbackResponse(Schema):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "total": 12,
                    "per_label": {"bag": 5, "dress": 7},
                    "misrecognised": 9,
                    "misrecognised_attention_branch": 8,
                    "per_model_version": {"attention/1": 12},
                }
            ]
        }
    )

    total: int
    per_label: dict[str, int]
    misrecognised: int
    misrecognised_attention_branch: int
    per_model_version: dict[str, int]


class GenderResponse(Schema):
    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "model": {"name": "gender", "version": "1"},
                    "label": "female",
                    "score": 0.93,
                    "probabilities": {"female": 0.93, "male": 0.07},
                    "contour_map": {
                        "width": 128,
                        "height": 128,
                        "png_base64": "iVBORw0KGgoAAAANSUhEUgAAAIAAAACACAAAAADrRVxmAAA...",
                        "extent": {"x0": 0.0, "y0": -40.0, "x1": 400.0, "y1": 360.0},
                    },
                }
            ]
        },
    )

    model: ModelRef
    label: str
    score: Score
    probabilities: dict[str, float]
    contour_map: MapPng | None = None  # only with ?contour=true


class RecognizeResponse(Schema):
    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "model": {"name": "landmark", "version": "1"},
                    "image": {"width": 640, "height": 480},
                    "landmarks": [
                        {
                            "class_id": 0,
                            "label": "stop",
                            "score": 0.97,
                            "point": {"x": 312.4, "y": 140.2},
                        }
                    ],
                }
            ]
        },
    )

    model: ModelRef
    image: ImageSize
    landmarks: list[Landmark]


class LiveResponse(Schema):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "alive"}]})

    status: Literal["alive"] = "alive"


class ModelHealth(Schema):
    state: str
    version: str | None = None
    error: str | None = None


class ReadyResponse(Schema):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ready",
                    "models": {"landmark": {"state": "ready", "version": "1", "error": None}},
                }
            ]
        }
    )

    status: Literal["ready"] = "ready"
    models: dict[str, ModelHealth]


class TensorInfo(Schema):
    name: str
    datatype: str
    shape: list[int]


class GraphInfo(Schema):
    """One ONNX graph of a multi-graph model version."""

    file: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]


class ModelInfo(Schema):
    """One model as served: what it expects, what it says, where it runs.

    A multi-graph version lists the first graph's inputs and every graph's outputs at the
    top level, and each graph in ``graphs``; a single-graph version has ``graphs`` null.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "landmark",
                    "version": "2",
                    "state": "ready",
                    "error": None,
                    "task": "landmark_points",
                    "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 160, 160]}],
                    "outputs": [{"name": "confidence", "datatype": "FP32", "shape": [-1, 400, 2]}],
                    "labels": ["stop", "yield"],
                    "providers": ["CPUExecutionProvider"],
                    "metrics": {"point_f1": 0.9},
                    "graphs": None,
                }
            ]
        }
    )

    name: str
    version: str | None
    state: str
    error: str | None = None
    task: str | None = None
    inputs: list[TensorInfo] = Field(default_factory=list)
    outputs: list[TensorInfo] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=list)
    providers: list[str] = Field(default_factory=list, description="providers in use")
    metrics: dict[str, Any] = Field(default_factory=dict)
    graphs: dict[str, GraphInfo] | None = None


class ModelsResponse(Schema):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "models": [
                        {
                            "name": "landmark",
                            "version": "1",
                            "state": "ready",
                            "error": None,
                            "task": "landmark_points",
                            "inputs": [
                                {"name": "image", "datatype": "FP32", "shape": [-1, 3, 160, 160]}
                            ],
                            "outputs": [
                                {"name": "confidence", "datatype": "FP32", "shape": [-1, 400, 2]}
                            ],
                            "labels": ["stop", "yield"],
                            "providers": ["CPUExecutionProvider"],
                            "metrics": {"point_f1": 0.9},
                            "graphs": None,
                        }
                    ]
                }
            ]
        }
    )

    models: list[ModelInfo]


class Problem(Schema):
    """RFC 9457 problem details; extension members may follow."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "urn:vision-service:problem:invalid-image",
                    "title": "Invalid image",
                    "status": 400,
                    "detail": "the upload is not a decodable image",
                }
            ]
        },
    )

    type: str
    title: str
    status: int
    detail: str


class V2Problem(Problem):
    """A problem document on a ``/v2`` path: the detail again in ``error``, where the Open
    Inference Protocol's clients read an error's message."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "about:blank",
                    "title": "Not Found",
                    "status": 404,
                    "detail": "unknown model 'nope'; this server serves ['landmark']",
                    "error": "unknown model 'nope'; this server serves ['landmark']",
                }
            ]
        },
    )

    error: str


# Where the OpenAPI document lists Problem, for responses written as plain schema dicts.
PROBLEM_REF = f"#/components/schemas/{Problem.__name__}"
# Every schema sent as application/problem+json (service/docs.py files them there).
PROBLEM_REFS = (PROBLEM_REF, f"#/components/schemas/{V2Problem.__name__}")


# The 403 every operation that changes something may answer (service/origin.py).
ORIGIN_REFUSAL = (
    "no API keys are configured and a browser sent the request from a page of another "
    "origin, or under a host name not in VISION_ALLOWED_HOSTS"
)

# The errors every image endpoint shares (one upload or two), for problem_responses.
UPLOAD_PROBLEMS: tuple[tuple[int, str], ...] = (
    (400, "an upload is not a decodable image, or the multipart body is broken"),
    (401, "API keys are configured and none or a wrong one was sent"),
    (403, ORIGIN_REFUSAL),
    (413, "an upload exceeds the size or pixel limit"),
    (415, "an upload's content type is not an image, or the body is not a multipart form"),
    (404, "this server does not serve the endpoint's model (its repository, VISION_MODELS)"),
    (408, "the body stopped arriving for VISION_BODY_TIMEOUT_S; the connection is closed"),
)


def problem_responses(*described: tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """An operation's ``responses=`` for its problem+json errors: (status, when) pairs."""
    return {
        status: {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}, "description": text}
        for status, text in described
    }


class OcclusionGrid(Schema):
    rows: int
    cols: int


class OcclusionBlocks(Schema):
    """Grid blocks of the pattern; ``*_end`` are exclusive."""

    row_start: int
    row_end: int
    col_start: int
    col_end: int


class Box(Schema):
    """A rectangle in image pixels, origin top-left."""

    x0: float
    y0: float
    x1: float
    y1: float


class Occlusion(Schema):
    """The predicted occlusion pattern; ``blocks`` and ``box`` are null when not occluded."""

    occluded: bool
    pattern_id: int
    score: Score = Field(description="softmax probability of the pattern")
    grid: OcclusionGrid
    blocks: OcclusionBlocks | None
    box: Box | None = Field(description="the covered area in image pixels")


OCCLUSION_EXAMPLE: dict[str, Any] = {
    "occluded": True,
    "pattern_id": 37,
    "score": 0.88,
    "grid": {"rows": 5, "cols": 5},
    "blocks": {"row_start": 2, "row_end": 4, "col_start": 0, "col_end": 4},
    "box": {"x0": 0.0, "y0": 44.8, "x1": 76.8, "y1": 89.6},
}


class OcclusionResponse(Schema):
    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "model": {"name": "occlusion", "version": "1"},
                    "image": {"width": 96, "height": 112},
                    "occlusion": OCCLUSION_EXAMPLE,
                    "embedding": [0.01, -0.12, 0.08],
                }
            ]
        },
    )

    model: ModelRef
    image: ImageSize
    occlusion: Occlusion
    embedding: list[float] = Field(description="L2-normalised identity embedding")


class VerifiedFace(Schema):
    """One of the two faces of a verification: its size and its occlusion pattern."""

    image: ImageSize
    occlusion: Occlusion


class VerifyResponse(Schema):
    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "model": {"name": "occlusion", "version": "1"},
                    "similarity": 0.91,
                    "threshold": 0.8,
                    "same": True,
                    "faces": [
                        {"image": {"width": 96, "height": 112}, "occlusion": OCCLUSION_EXAMPLE},
                        {
                            "image": {"width": 192, "height": 224},
                            "occlusion": OCCLUSION_EXAMPLE
                            | {"occluded": False, "pattern_id": 0, "blocks": None, "box": None},
                        },
                    ],
                }
            ]
        },
    )

    model: ModelRef
    similarity: float = Field(description="cosine similarity of the two embeddings, -1..1")
    threshold: float = Field(description="the model's same-person threshold (config.json)")
    same: bool = Field(description="similarity >= threshold")
    faces: list[VerifiedFace] = Field(description="image_a's face, then image_b's")
