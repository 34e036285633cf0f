"""Response bodies; field names are those of /work/shared/API.md."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ModelRef(BaseModel):
    name: str
    version: str


class ImageSize(BaseModel):
    """Size of the upload as the caller sees it (after EXIF orientation), in pixels."""

    width: int
    height: int


class Point(BaseModel):
    """Image pixels, origin top-left, x right, y down."""

    x: float
    y: float


class Landmark(BaseModel):
    class_id: int
    label: str
    score: float
    point: Point


class RecognizeResponse(BaseModel):
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


class LiveResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "alive"}]})

    status: Literal["alive"] = "alive"


class ModelHealth(BaseModel):
    state: str
    version: str | None = None
    error: str | None = None


class ReadyResponse(BaseModel):
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


class TensorInfo(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class GraphInfo(BaseModel):
    """One ONNX graph of a multi-graph model version."""

    file: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]


class ModelInfo(BaseModel):
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


class ModelsResponse(BaseModel):
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


class Problem(BaseModel):
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
