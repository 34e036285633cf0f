"""Task decoders: raw graph outputs into results in image pixels, keyed by ``task``.

Pure numpy. Each decoder is built from a version's config.json (its ``decode`` block,
labels and output shapes) and refuses a config it cannot honour, so such a model fails
at load time instead of on the first request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.imaging import LetterboxTransform

# The landmark graph's outputs by name (models/landmark/export.py writes them): per grid
# cell the class distribution, the object confidence and the reference point's offset.
LANDMARK_OUTPUTS = ("class_probs", "confidence", "points")


class DecodeConfigError(ValueError):
    """The config's decode block does not fit the decoder or the graph."""


@dataclass(frozen=True)
class LandmarkPoint:
    """One decoded landmark; ``x``/``y`` in image pixels."""

    class_id: int
    label: str
    score: float
    x: float
    y: float


class GridConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rows: int = Field(ge=1)
    cols: int = Field(ge=1)


class LandmarkDecodeConfig(BaseModel):
    """``decode`` block of a ``landmark_points`` model (models/repository/README.md)."""

    model_config = ConfigDict(extra="allow")

    stride: int = Field(ge=1)
    grid: GridConfig
    anchors: int = Field(ge=1)
    background_class: int = Field(ge=1)
    confidence_threshold: float = Field(ge=0.0, le=1.0)
    nms_radius: float = Field(ge=0.0)


def point_nms(points: npt.NDArray[np.float64], radius: float) -> npt.NDArray[np.intp]:
    """Greedy point suppression over ``(n, 2)`` points already sorted best first.

    Returns the indices kept: a point is dropped when it lies within ``radius``
    (distance <= radius) of a point kept before it.
    """
    count = points.shape[0]
    suppressed = np.zeros(count, dtype=bool)
    kept: list[int] = []
    radius_sq = radius * radius
    for index in range(count):
        if suppressed[index]:
            continue
        kept.append(index)
        # One vectorised distance row per kept point: at most a few hundred cells.
        delta = points[index + 1 :] - points[index]
        suppressed[index + 1 :] |= np.einsum("ij,ij->i", delta, delta) <= radius_sq
    return np.asarray(kept, dtype=np.intp)


_Block = TypeVar("_Block", bound=BaseModel)


def parse_decode_block(model: type[_Block], decode: Mapping[str, Any]) -> _Block:
    """config.json's ``decode`` block as ``model``; DecodeConfigError when it does not fit."""
    try:
        return model.model_validate(dict(decode))
    except ValidationError as exc:
        raise DecodeConfigError(f"invalid decode block: {exc}") from exc


class LandmarkPointsDecoder:
    """Decoder for ``task = "landmark_points"`` (seed 000 claims 11, 12 and 20)."""

    task = "landmark_points"

    def __init__(self, config: LandmarkDecodeConfig, labels: Sequence[str]) -> None:
        self.config = config
        self.labels = tuple(labels)

    @classmethod
    def from_config(
        cls,
        decode: Mapping[str, Any],
        labels: Sequence[str],
        output_shapes: Mapping[str, Sequence[int]],
    ) -> LandmarkPointsDecoder:
        """Build from config.json parts; raises DecodeConfigError when they disagree."""
        config = parse_decode_block(LandmarkDecodeConfig, decode)
        classes = len(labels)
        if config.background_class != classes:
            raise DecodeConfigError(
                f"background_class is {config.background_class} but there are {classes} "
                "labels; background must be the last class index K"
            )
        missing = [name for name in LANDMARK_OUTPUTS if name not in output_shapes]
        if missing:
            raise DecodeConfigError(f"landmark_points needs outputs {missing}")
        cells = config.grid.rows * config.grid.cols
        expected = {
            "class_probs": (cells, config.anchors, classes + 1),
            "confidence": (cells, config.anchors),
            "points": (cells, config.anchors, 2),
        }
        for name, dims in expected.items():
            shape = tuple(output_shapes[name])
            if len(shape) != len(dims) + 1 or any(
                got != want and got != -1 for got, want in zip(shape[1:], dims, strict=True)
            ):
                raise DecodeConfigError(
                    f"output {name!r} has shape {list(shape)}; the decode block implies "
                    f"[-1, {', '.join(map(str, dims))}]"
                )
        return cls(config, labels)

    def decode(
        self,
        outputs: Mapping[str, npt.NDArray[np.float32]],
        transform: LetterboxTransform,
        *,
        min_score: float,
        batch_index: int = 0,
    ) -> list[LandmarkPoint]:
        """Landmarks of one batch element, best score first, points in image pixels.

        ``outputs``: ``class_probs (N, C, A, K+1)``, ``confidence (N, C, A)``,
        ``points (N, C, A, 2)`` in model-input pixels; ``transform`` is that element's
        letterbox.
        """
        # Cells are picked before anything else is computed: the threshold leaves a few
        # of the grid's hundreds, and every numpy call on the whole grid costs the event
        # loop (which holds the GIL) microseconds per request.
        confidence = outputs["confidence"][batch_index]  # (C, A)
        best = np.argmax(confidence, axis=1)  # (C,) the anchor with the highest confidence
        best_confidence = confidence[np.arange(confidence.shape[0]), best]  # (C,)
        # (n,) the cells whose best anchor passes the threshold
        cells = np.flatnonzero(best_confidence >= np.float32(self.config.confidence_threshold))
        if cells.size == 0:
            return []
        anchors = best[cells]
        classes = self.config.background_class
        foreground = outputs["class_probs"][batch_index][cells, anchors, :classes]  # (n, K)
        class_ids = np.argmax(foreground, axis=1)
        # Compared in float32, the model's precision: a 0.7 from the graph is float32(0.7),
        # which must pass min_score=0.7 although it is a hair below the double 0.7.
        scores = best_confidence[cells].astype(np.float32) * foreground.max(axis=1).astype(
            np.float32
        )
        passing = np.flatnonzero(scores >= np.float32(min_score))
        # Stable sort: equal scores keep cell order, so results are reproducible.
        order = passing[np.argsort(-scores[passing], kind="stable")]
        points = outputs["points"][batch_index][cells[order], anchors[order]]  # (m, 2)
        kept = point_nms(points.astype(np.float64), self.config.nms_radius)
        order, points = order[kept], points[kept]
        return [
            LandmarkPoint(
                class_id=int(class_ids[index]),
                label=self.labels[int(class_ids[index])],
                score=float(scores[index]),
                x=float(xy[0]),
                y=float(xy[1]),
            )
            for index, xy in zip(order, transform.to_image(points), strict=True)
        ]


class MapSize(BaseModel):
    model_config = ConfigDict(extra="forbid")

    height: int = Field(ge=1)
    width: int = Field(ge=1)


class AttentionDecodeConfig(BaseModel):
    """``decode`` block of an ``attention_classification`` model (models/repository/README.md):
    which graph and output is which, the attention map's grid, how many classes to list."""

    model_config = ConfigDict(extra="allow")

    map: MapSize
    top_k: int = Field(default=5, ge=1)
    features_graph: str = "features"
    perception_graph: str = "perception"
    feature_map: str = "feature_map"
    attention_map: str = "attention_map"
    attention_probs: str = "attention_probs"
    perception_probs: str = "perception_probs"


@dataclass(frozen=True)
class ClassScore:
    class_id: int
    label: str
    score: float


@dataclass(frozen=True)
class Classification:
    """The arg-max class and the ``top_k`` best classes, best first."""

    class_id: int
    label: str
    score: float
    top_k: tuple[ClassScore, ...]


class AttentionDecoder:
    """Decoder for ``task = "attention_classification"`` (seed 002): probabilities into
    classes; the graphs' roles and the map grid come from the decode block."""

    task = "attention_classification"

    def __init__(self, config: AttentionDecodeConfig, labels: Sequence[str]) -> None:
        self.config = config
        self.labels = tuple(labels)

    @classmethod
    def from_config(
        cls,
        decode: Mapping[str, Any],
        labels: Sequence[str],
        output_shapes: Mapping[str, Sequence[int]],
    ) -> AttentionDecoder:
        config = parse_decode_block(AttentionDecodeConfig, decode)
        classes = len(labels)
        h, w = config.map.height, config.map.width
        expected = {
            config.attention_map: (1, h, w),
            config.attention_probs: (classes,),
            config.perception_probs: (classes,),
        }
        names = (config.feature_map, *expected)
        missing = [name for name in names if name not in output_shapes]
        if missing:
            raise DecodeConfigError(f"attention_classification needs outputs {missing}")
        feature_shape = tuple(output_shapes[config.feature_map])
        if len(feature_shape) != 4 or tuple(feature_shape[2:]) != (h, w):
            raise DecodeConfigError(
                f"output {config.feature_map!r} has shape {list(feature_shape)}; the map "
                f"grid implies [-1, K, {h}, {w}]"
            )
        for name, dims in expected.items():
            shape = tuple(output_shapes[name])
            if len(shape) != len(dims) + 1 or tuple(shape[1:]) != dims:
                raise DecodeConfigError(
                    f"output {name!r} has shape {list(shape)}; expected "
                    f"[-1, {', '.join(map(str, dims))}]"
                )
        return cls(config, labels)

    def classify(self, probs: npt.NDArray[np.float32]) -> Classification:
        """One element's ``(K,)`` probabilities: arg-max and top k (ties: lower id first)."""
        order = np.argsort(-probs, kind="stable")[: self.config.top_k]
        top = tuple(
            ClassScore(class_id=int(i), label=self.labels[int(i)], score=float(probs[i]))
            for i in order
        )
        best = top[0]
        return Classification(best.class_id, best.label, best.score, top)


class OcclusionDecodeConfig(BaseModel):
    """``decode`` block of an ``occlusion_embedding`` model (seed 001): the K x K grid, the
    pattern table (index = pattern id; null = no occlusion, else ``[row_start, row_end,
    col_start, col_end]`` with exclusive ends), the output names and the verify threshold."""

    model_config = ConfigDict(extra="allow")

    grid: GridConfig
    patterns: list[tuple[int, int, int, int] | None] = Field(min_length=2)
    pattern_logits: str = "pattern_logits"
    embedding: str = "embedding"
    # Cosine similarity at or above which two faces are called the same person.
    verify_threshold: float = Field(ge=-1.0, le=1.0)


@dataclass(frozen=True)
class OcclusionResult:
    """One face: the arg-max pattern, its softmax probability, its blocks (None when not
    occluded), its box in image pixels ``(x0, y0, x1, y1)`` clipped to the image, and the
    L2-normalised embedding (float32)."""

    occluded: bool
    pattern_id: int
    score: float
    blocks: tuple[int, int, int, int] | None
    box: tuple[float, float, float, float] | None
    embedding: npt.NDArray[np.float32]


class OcclusionDecoder:
    """Decoder for ``task = "occlusion_embedding"`` (seed 001): pattern logits into the
    pattern, its blocks and its box in the upload's pixels; the embedding normalised."""

    task = "occlusion_embedding"

    def __init__(self, config: OcclusionDecodeConfig, labels: Sequence[str]) -> None:
        self.config = config
        self.labels = tuple(labels)

    @classmethod
    def from_config(
        cls,
        decode: Mapping[str, Any],
        labels: Sequence[str],
        output_shapes: Mapping[str, Sequence[int]],
    ) -> OcclusionDecoder:
        config = parse_decode_block(OcclusionDecodeConfig, decode)
        rows, cols = config.grid.rows, config.grid.cols
        for pid, blocks in enumerate(config.patterns):
            if blocks is None:
                continue
            r0, r1, c0, c1 = blocks
            if not (0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= cols):
                raise DecodeConfigError(f"pattern {pid} {list(blocks)} is not inside the grid")
        missing = [n for n in (config.pattern_logits, config.embedding) if n not in output_shapes]
        if missing:
            raise DecodeConfigError(f"occlusion_embedding needs outputs {missing}")
        logits = tuple(output_shapes[config.pattern_logits])
        if len(logits) != 2 or logits[1] != len(config.patterns):
            raise DecodeConfigError(
                f"output {config.pattern_logits!r} has shape {list(logits)}; the pattern "
                f"table implies [-1, {len(config.patterns)}]"
            )
        if len(tuple(output_shapes[config.embedding])) != 2:
            raise DecodeConfigError(f"output {config.embedding!r} must be (batch, dimension)")
        return cls(config, labels)

    def decode(
        self,
        outputs: Mapping[str, npt.NDArray[Any]],
        transform: LetterboxTransform,
        model_size: tuple[int, int],
        index: int = 0,
    ) -> OcclusionResult:
        """Element ``index`` of a batch; ``model_size`` is the input's (height, width) in
        model-input pixels, which the grid divides."""
        logits = np.asarray(outputs[self.config.pattern_logits][index], np.float64)
        exp = np.exp(logits - logits.max())
        probs = exp / exp.sum()
        pid = int(np.argmax(probs))
        emb = np.asarray(outputs[self.config.embedding][index], np.float32)
        emb = emb / max(float(np.linalg.norm(emb)), 1e-12)
        blocks = self.config.patterns[pid]
        if blocks is None:
            return OcclusionResult(False, pid, float(probs[pid]), None, None, emb)
        r0, r1, c0, c1 = blocks
        height, width = model_size
        rows, cols = self.config.grid.rows, self.config.grid.cols
        corners = transform.to_image(
            [[c0 * width / cols, r0 * height / rows], [c1 * width / cols, r1 * height / rows]]
        )
        # The letterbox band is not part of the upload: the box ends at the image's edges.
        (x0, y0), (x1, y1) = corners
        w, h = transform.image_width, transform.image_height
        box = (
            float(np.clip(x0, 0, w)),
            float(np.clip(y0, 0, h)),
            float(np.clip(x1, 0, w)),
            float(np.clip(y1, 0, h)),
        )
        return OcclusionResult(True, pid, float(probs[pid]), blocks, box, emb)


class GenderDecodeConfig(BaseModel):
    """``decode`` block of a ``gender_contour`` model (seed 003): the names of the logits
    and contour-map outputs and the contour map's size."""

    model_config = ConfigDict(extra="allow")

    map: MapSize
    logits: str = "logits"
    contour_map: str = "contour_map"


@dataclass(frozen=True)
class GenderResult:
    """Softmax probabilities by label, the arg-max label and its score, and the ``(h, w)``
    contour map in 0..1 (float32)."""

    label: str
    score: float
    probabilities: dict[str, float]
    contour_map: npt.NDArray[np.float32]


class GenderDecoder:
    """Decoder for ``task = "gender_contour"`` (seed 003): logits into class probabilities,
    the contour map passed through."""

    task = "gender_contour"

    def __init__(self, config: GenderDecodeConfig, labels: Sequence[str]) -> None:
        self.config = config
        self.labels = tuple(labels)

    @classmethod
    def from_config(
        cls,
        decode: Mapping[str, Any],
        labels: Sequence[str],
        output_shapes: Mapping[str, Sequence[int]],
    ) -> GenderDecoder:
        config = parse_decode_block(GenderDecodeConfig, decode)
        expected = {
            config.logits: (len(labels),),
            config.contour_map: (1, config.map.height, config.map.width),
        }
        missing = [name for name in expected if name not in output_shapes]
        if missing:
            raise DecodeConfigError(f"gender_contour needs outputs {missing}")
        for name, dims in expected.items():
            shape = tuple(output_shapes[name])
            if len(shape) != len(dims) + 1 or tuple(shape[1:]) != dims:
                raise DecodeConfigError(
                    f"output {name!r} has shape {list(shape)}; expected "
                    f"[-1, {', '.join(map(str, dims))}]"
                )
        return cls(config, labels)

    def decode(self, outputs: Mapping[str, npt.NDArray[Any]], index: int = 0) -> GenderResult:
        """Element ``index`` of a batch: softmax of its logits and its contour map."""
        logits = np.asarray(outputs[self.config.logits][index], np.float64)
        exp = np.exp(logits - logits.max())
        probs = exp / exp.sum()
        best = int(np.argmax(probs))
        contour = np.asarray(outputs[self.config.contour_map][index, 0], np.float32)
        return GenderResult(
            label=self.labels[best],
            score=float(probs[best]),
            probabilities={label: float(p) for label, p in zip(self.labels, probs, strict=True)},
            contour_map=np.clip(contour, 0.0, 1.0),
        )


Decoder = LandmarkPointsDecoder | AttentionDecoder | GenderDecoder | OcclusionDecoder
DecoderFactory = Callable[[Mapping[str, Any], Sequence[str], Mapping[str, Sequence[int]]], Decoder]

DECODERS: dict[str, DecoderFactory] = {
    LandmarkPointsDecoder.task: LandmarkPointsDecoder.from_config,
    AttentionDecoder.task: AttentionDecoder.from_config,
    GenderDecoder.task: GenderDecoder.from_config,
    OcclusionDecoder.task: OcclusionDecoder.from_config,
}


def build_decoder(
    task: str,
    decode: Mapping[str, Any],
    labels: Sequence[str],
    output_shapes: Mapping[str, Sequence[int]],
) -> Decoder:
    """The decoder for ``task``; raises DecodeConfigError for an unknown task or bad config."""
    try:
        factory = DECODERS[task]
    except KeyError:
        raise DecodeConfigError(
            f"unknown task {task!r}; this service decodes {sorted(DECODERS)}"
        ) from None
    return factory(decode, labels, output_shapes)
