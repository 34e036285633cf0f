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
    model_config = ConfigDict(protected_namespaces=())

    model: ModelRef
    image: ImageSize
    landmarks: list[Landmark]


class LiveResponse(BaseModel):
    status: Literal["alive"] = "alive"


class ModelHealth(BaseModel):
    state: str
    version: str | None = None
    error: str | None = None


class ReadyResponse(BaseModel):
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
    models: list[ModelInfo]


class Problem(BaseModel):
    """RFC 9457 problem details; extension members may follow."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
