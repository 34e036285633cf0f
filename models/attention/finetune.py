"""Fine-tune the attention model from teacher maps (seed 002, second embodiment).

    python -m models.attention.finetune --base-version 1 --version 2 \
        --feedback var/feedback.sqlite3 --repository runs/repository

(``runs/repository`` holding a copy of version 1; a version that exists is refused unless
``--overwrite``) reads the teacher records the editor stored (service/feedback/;
``--feedback`` takes what the service's ``VISION_FEEDBACK_URL`` takes: a SQLite path,
``sqlite:///<path>`` or ``postgresql://user:password@host:port/dbname``), selects by default
the misrecognised ones (the perception branch's answer with the model's own map was wrong;
``--select attention`` uses the attention branch's answer, ``either`` both, ``all`` every
record: the seed's variation 7), and fine-tunes the base version's network with

    L = Latt + Lper + gamma * ||M' - M||^2

(M' the teacher map, M the model's map) with the feature extractor frozen (``--train
attention,perception``; the seed's variation 8 choices: any non-empty subset of
``features``, ``attention``, ``perception``). It then exports the next version into the
model repository with its metrics: the test figures of models/attention/export.py and the
accuracy before/after on a held-out set of distractor canvases.

Where no person has edited maps yet, ``simulate`` stands in for one: it runs the base
model over "distractor" canvases (a large target item and a small item of another class,
models/attention/data.py) made from training items and training photographs, and stores a
teacher record per canvas whose edited map is the target item's box:

    python -m models.attention.finetune simulate --base-version 1 \
        --feedback data/attention/simulated_feedback.sqlite3 --count 4000

Records are read through service/feedback/ (the same code that writes them) and images
are prepared with service/imaging.py, exactly as the service prepares uploads.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from models.attention import export as exporter
from models.attention.data import LABELS, Canvases, box_masks
from models.attention.loss import finetune_loss
from models.attention.net import AttentionNet, load_checkpoint, save_checkpoint
from models.attention.train import MEAN, STD, TrainConfig, make_split, predict, to_tensor
from models.common.export import add_overwrite_argument, new_version_dir, refuse_existing_version
from models.common.plots import plot_bars
from service.attention import area_average, map_to_png
from service.feedback import TeacherRecord, open_store, redact
from service.imaging import decode_image, letterbox
from service.settings import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_IMAGE_SIDE

SELECTIONS = ("misrecognised", "attention", "either", "all")
PARTS = ("features", "attention", "perception")
CHECKPOINT = "checkpoint.pt"  # the PyTorch weights kept beside a version's graphs
HELD_OUT_SEED = 2000
SIMULATE_SEED = 3000
REPLAY_SEED = 4000
# The service's decode limits: teacher records were uploads it accepted.
MAX_PIXELS, MAX_SIDE = DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_IMAGE_SIDE


@dataclass
class TeacherSet:
    images: np.ndarray  # (N, S, S, 3) uint8, letterboxed as the service does
    labels: np.ndarray  # (N,)
    maps: np.ndarray  # (N, 1, h, w) float32 teacher maps


def select(records: list[TeacherRecord], how: str) -> list[TeacherRecord]:
    """The records to learn from: the seed's selection of misrecognised ones, or all."""
    if how not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}")

    def wrong_per(r: TeacherRecord) -> bool:
        return r.perception_class_id != r.label_id

    def wrong_att(r: TeacherRecord) -> bool:
        return r.attention_class_id != r.label_id

    keep = {
        "misrecognised": wrong_per,
        "attention": wrong_att,
        "either": lambda r: wrong_per(r) or wrong_att(r),
        "all": lambda r: True,
    }[how]
    return [r for r in records if keep(r)]


def teacher_set(
    records: list[TeacherRecord], net: AttentionNet, preprocess: dict | None = None
) -> TeacherSet:
    """Decode the records' images and maps into arrays the network takes, letterboxed as
    the service fits them with ``preprocess`` (the base version's config.json block: its
    bars' value and mode; default black bars)."""
    size, grid = net.config.input_size, net.config.map_size
    pad_value = tuple(preprocess["pad_value"]) if preprocess else (0, 0, 0)
    pad = preprocess.get("pad", "constant") if preprocess else "constant"
    images, labels, maps = [], [], []
    for r in records:
        rgb = decode_image(r.image, max_pixels=MAX_PIXELS, max_side=MAX_SIDE)
        boxed, _ = letterbox(rgb, size, size, pad_value, pad=pad)
        teacher = np.asarray(Image.open(io.BytesIO(r.edited_map)).convert("L"), np.float32) / 255
        if teacher.shape != (grid, grid):
            teacher = area_average(teacher, grid, grid)
        images.append(boxed)
        labels.append(r.label_id)
        maps.append(teacher[None])
    return TeacherSet(
        np.stack(images), np.asarray(labels, np.int64), np.stack(maps).astype(np.float32)
    )


def set_trainable(net: AttentionNet, parts: tuple[str, ...]) -> list[torch.nn.Parameter]:
    """Freeze every part not in ``parts``; returns the parameters left to train."""
    modules = {
        "features": [net.features],
        "attention": [net.attention_block, net.attention_head, net.map_head],
        "perception": [net.perception, net.classifier],
    }
    params = []
    for part, group in modules.items():
        for module in group:
            for p in module.parameters():
                p.requires_grad_(part in parts)
                if part in parts:
                    params.append(p)
    return params


def finetune(
    net: AttentionNet,
    data: TeacherSet,
    *,
    parts: tuple[str, ...],
    gamma: float,
    epochs: int,
    lr: float,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    replay: Canvases | None = None,
) -> list[dict]:
    """Fine-tune in place; batch-norm statistics stay frozen (the teacher set is small and
    one-sided). ``replay``: single-item training canvases mixed in with Latt + Lper only
    (no teacher map), so that the model does not forget what the teacher records do not
    show. Returns per-epoch mean loss terms."""
    torch.manual_seed(seed)
    params = set_trainable(net, parts)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    images, labels, maps = data.images, data.labels, data.maps
    has_map = np.ones(len(labels), bool)
    if replay is not None and len(replay):
        images = np.concatenate([images, replay.images])
        labels = np.concatenate([labels, replay.labels[:, 0]])
        maps = np.concatenate([maps, np.zeros((len(replay), *maps.shape[1:]), np.float32)])
        has_map = np.concatenate([has_map, np.zeros(len(replay), bool)])
    x_all = to_tensor(images)
    y_all = torch.from_numpy(labels)
    m_all = torch.from_numpy(maps)
    h_all = torch.from_numpy(has_map)
    generator = torch.Generator().manual_seed(seed)
    history = []
    net.eval()  # frozen BN statistics; gradients still flow
    for epoch in range(epochs):
        order = torch.randperm(len(y_all), generator=generator)
        sums = {"attention": 0.0, "perception": 0.0, "map": 0.0, "total": 0.0}
        steps = 0
        for i in tqdm(
            range(0, len(order), batch_size),
            desc=f"fine-tune {epoch + 1}/{epochs}",
            disable=not progress,
            leave=False,
        ):
            idx = order[i : i + batch_size]
            terms = finetune_loss(net(x_all[idx]), y_all[idx], m_all[idx], gamma, h_all[idx])
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            opt.step()
            for k, v in terms.items():
                sums[k] += v.item()
            steps += 1
        history.append({"epoch": epoch + 1, **{k: v / max(steps, 1) for k, v in sums.items()}})
        tqdm.write(f"fine-tune epoch {epoch + 1}: " + json.dumps(history[-1]))
    for p in net.parameters():
        p.requires_grad_(True)
    return history


def distractor_metrics(net: AttentionNet, canvases: Canvases) -> dict[str, float]:
    """Accuracy on distractor canvases (label = the large item) with the model's own map,
    and how much of its attention falls on the target and on the distractor."""
    out = predict(net, canvases.images)
    size = net.config.input_size
    return {
        "perception_accuracy": float((out["perception"].argmax(1) == canvases.labels[:, 0]).mean()),
        "attention_branch_accuracy": float(
            (out["attention"].argmax(1) == canvases.labels[:, 0]).mean()
        ),
        "answers_distractor": float((out["perception"].argmax(1) == canvases.labels[:, 1]).mean()),
        "attention_on_target": exporter.attention_mass(out["maps"], canvases.boxes[:, 0], size),
        "attention_on_distractor": exporter.attention_mass(out["maps"], canvases.boxes[:, 1], size),
    }


@dataclass(frozen=True)
class BaseVersion:
    """What fine-tuning takes from the version it starts from."""

    checkpoint: Path  # the PyTorch weights: the version's own, or its graphs' source's
    checkpoint_version: str  # the version that checkpoint belongs to
    preprocess: dict  # its config.json block: how the service fits an image into the input
    # The models.common.rerelease commands from the checkpoint's version up to the base
    # (empty when the base has its own checkpoint): part of the new version's recipe.
    rerelease_commands: tuple[str, ...] = ()


def _graph_digests(config: dict) -> dict[str, str]:
    return {name: graph["sha256"] for name, graph in config["graphs"].items()}


def base_version(repository: Path, version: str) -> BaseVersion:
    """The base ``version``'s checkpoint and pre-processing. A version re-released from
    another (``released_from`` in config.json: the same graph bytes, another preprocess
    block, as version 6 is version 5's) has no checkpoint of its own: its source's, whose
    weights those graphs are, is taken (the graphs' sha256 must agree along the way), and
    the preprocess block stays the base's own."""
    directory = repository / exporter.NAME

    def config_of(name: str, why: str) -> dict:
        path = directory / name / "config.json"
        if not path.exists():
            raise SystemExit(f"{path} not found: {why}")
        config: dict = json.loads(path.read_text())
        return config

    base = config_of(version, f"no base version {version!r}")
    digests = _graph_digests(base)
    source, current, chain, commands = version, base, [version], []
    while not (directory / source / CHECKPOINT).exists():
        released = current.get("released_from")
        if not isinstance(released, dict) or "version" not in released:
            raise SystemExit(
                f"{directory / source / CHECKPOINT} not found, and version {source} names no "
                "version it was re-released from: the base version has no PyTorch checkpoint"
            )
        origin = str(released["version"])
        if origin in chain:
            raise SystemExit(
                f"versions re-released from each other in a loop ({' <- '.join(chain)} <- "
                f"{origin}): none holds the PyTorch checkpoint"
            )
        commands.append(str(released.get("command", "")))
        current = config_of(
            origin,
            f"version {source} was re-released from version {origin}: copy version {origin} "
            "into the repository too (its checkpoint holds the weights)",
        )
        if _graph_digests(current) != digests:
            raise SystemExit(
                f"version {source}'s graphs are not version {origin}'s (sha256 differ): "
                f"{origin}'s checkpoint is not the base's weights"
            )
        source = origin
        chain.append(source)
    return BaseVersion(
        directory / source / CHECKPOINT,
        source,
        base["preprocess"],
        tuple(command for command in reversed(commands) if command),
    )


def simulate(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="finetune simulate")
    p.add_argument("--repository", type=Path, default=Path("models/repository"))
    p.add_argument("--base-version", default="1")
    p.add_argument("--feedback", required=True, help="teacher-record database: path or URL")
    p.add_argument("--count", type=int, default=4000)
    p.add_argument("--seed", type=int, default=SIMULATE_SEED)
    p.add_argument("--data-root", default=None, help="Fashion-MNIST directory (idx .gz files)")
    a = p.parse_args(argv)
    net, _ = load_checkpoint(base_version(a.repository, a.base_version).checkpoint)
    config = TrainConfig(net=net.config, data_root=a.data_root)
    canvases = make_split(config, "train", a.count, "distractor", a.seed)
    out = predict(net, canvases.images)
    teachers = box_masks(canvases.boxes[:, 0], net.config.input_size, net.config.map_size)
    with open_store(a.feedback) as store:
        for i in range(len(canvases)):
            buffer = io.BytesIO()
            Image.fromarray(canvases.images[i]).save(buffer, format="PNG")
            label = int(canvases.labels[i, 0])
            store.add(
                TeacherRecord(
                    model_name=exporter.NAME,
                    model_version=a.base_version,
                    label=LABELS[label],
                    label_id=label,
                    perception_class_id=int(out["perception"][i].argmax()),
                    attention_class_id=int(out["attention"][i].argmax()),
                    corrected_class_id=-1,  # not asked: the simulated person only drew the map
                    image=buffer.getvalue(),
                    edited_map=map_to_png(teachers[i, 0]),
                    model_map=map_to_png(out["maps"][i, 0]),
                    map_height=net.config.map_size,
                    map_width=net.config.map_size,
                )
            )
        counts = store.counts()
    print(json.dumps(counts.__dict__, indent=1))
    return counts.__dict__


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["simulate"]:
        return simulate(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repository", type=Path, default=Path("models/repository"))
    p.add_argument("--base-version", default="1")
    p.add_argument("--version", default=None, help="default: base version + 1")
    p.add_argument("--feedback", required=True, help="teacher-record database: path or URL")
    p.add_argument("--select", choices=SELECTIONS, default="misrecognised")
    p.add_argument("--train", default="attention,perception", help="parts to re-learn")
    p.add_argument("--gamma", type=float, default=0.05)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--replay",
        type=int,
        default=4000,
        help="single-item training canvases mixed in (Latt + Lper only); 0 = none",
    )
    p.add_argument("--held-out", type=int, default=2000, help="distractor canvases (test)")
    p.add_argument("--test-pairs", type=int, default=2000)
    p.add_argument("--test-items", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data-root", default=None, help="Fashion-MNIST directory (idx .gz files)")
    add_overwrite_argument(p)
    a = p.parse_args(argv)
    parts = tuple(part.strip() for part in a.train.split(",") if part.strip())
    if not parts or any(part not in PARTS for part in parts):
        raise SystemExit(f"--train takes a non-empty comma list of {PARTS}")
    if a.threads:
        torch.set_num_threads(a.threads)
    started = time.time()
    version = a.version or str(int(a.base_version) + 1)
    refuse_existing_version(a.repository / exporter.NAME / version, a.overwrite)
    base = base_version(a.repository, a.base_version)
    net, ckpt = load_checkpoint(base.checkpoint)
    size = net.config.input_size
    if (base.preprocess["height"], base.preprocess["width"]) != (size, size):
        raise SystemExit(
            f"version {a.base_version} serves {base.preprocess['width']}x"
            f"{base.preprocess['height']} inputs, its checkpoint's network takes {size}x{size}"
        )
    with open_store(a.feedback) as store:
        records = store.records(model_name=exporter.NAME)
        source = store.description  # the password masked: this goes into the model card
    chosen = select(records, a.select)
    if not chosen:
        raise SystemExit(
            f"no teacher records selected ({len(records)} stored, --select {a.select})"
        )
    data = teacher_set(chosen, net, base.preprocess)
    config = TrainConfig(net=net.config, data_root=a.data_root)
    held_out = make_split(config, "test", a.held_out, "distractor", HELD_OUT_SEED)
    before = distractor_metrics(net, held_out)
    replay = make_split(config, "train", a.replay, "single", REPLAY_SEED) if a.replay else None
    history = finetune(
        net, data, parts=parts, gamma=a.gamma, epochs=a.epochs, lr=a.lr, replay=replay
    )
    after = distractor_metrics(net, held_out)
    print(json.dumps({"before": before, "after": after}, indent=1))

    version_dir = new_version_dir(a.repository, exporter.NAME, version, a.overwrite)
    # The --feedback URL's password must not reach the card or the checkpoint.
    command = "python -m models.attention.finetune " + " ".join(redact(arg) for arg in argv)
    finetune_info = {
        "base_version": a.base_version,
        "checkpoint_version": base.checkpoint_version,
        "feedback_db": source,
        "records_stored": len(records),
        "records_selected": len(chosen),
        "selection": a.select,
        "trained_parts": list(parts),
        "gamma": a.gamma,
        "epochs": a.epochs,
        "lr": a.lr,
        "replay_single_item_canvases": a.replay,
        "held_out_distractor_canvases": a.held_out,
        "held_out_before": before,
        "held_out_after": after,
        "history": history,
        "seconds": round(time.time() - started, 1),
    }
    save_checkpoint(
        version_dir / CHECKPOINT,
        net,
        epoch=ckpt.get("epoch"),
        mean=MEAN,
        std=STD,
        train_config=(ckpt.get("train_config") or {}) | {"finetune_command": command},
    )
    single, pairs = exporter.test_split(config, a.test_pairs, a.test_items)
    graphs = exporter.export_graphs(net, version_dir, to_tensor(single.images[:16]))
    metrics, s, pr = exporter.measure(exporter.OnnxAttention(version_dir), net, single, pairs)
    base_config = json.loads(
        (a.repository / exporter.NAME / a.base_version / "config.json").read_text()
    )
    base_training = base_config["training"]
    cfg = exporter.write_version(
        net,
        version_dir,
        graphs,
        {
            "test": metrics,
            "targets": exporter.TARGETS,
            "finetune": {k: v for k, v in finetune_info.items() if k != "history"},
            "base_version_test": base_config["metrics"]["test"],
        },
        {
            "command": base_training.get("command"),
            "commands": [*base_training.get("commands", []), *base.rerelease_commands, command],
            "data": exporter.DATA_NOTE,
            "seed": base_training.get("seed", 0),
            "epochs_trained": ckpt.get("epoch"),
            "net": ckpt["config"],
            "finetune": finetune_info,
        },
        preprocess=base.preprocess,
    )
    exporter.draw_overlays(single, s, version_dir / "attention_overlays.png")
    exporter.draw_corrections(pairs, pr, net, version_dir / "correction_examples.png")
    base_net, _ = load_checkpoint(base.checkpoint)
    draw_before_after(base_net, net, held_out, version_dir / "finetune_examples.png")
    keys = ["perception_accuracy", "attention_branch_accuracy", "attention_on_target"]
    plot_bars(
        version_dir / "finetune_before_after.png",
        keys,
        {
            f"before (v{a.base_version})": [before[k] for k in keys],
            f"after (v{version})": [after[k] for k in keys],
        },
        title=f"Held-out distractor canvases ({a.held_out})",
    )
    card = exporter.main_card(cfg) + finetune_section(finetune_info, version, base_config)
    (version_dir / "MODEL_CARD.md").write_text(card)
    return cfg


def draw_before_after(base: AttentionNet, tuned: AttentionNet, canvases: Canvases, path: Path):
    """Held-out distractor canvases: the base model's map and answer, then the tuned one's."""
    b = predict(base, canvases.images[:8])
    t = predict(tuned, canvases.images[:8])
    tiles = []
    for out, name in ((b, "before"), (t, "after")):
        for i in range(8):
            pred = int(out["perception"][i].argmax())
            want = int(canvases.labels[i, 0])
            tiles.append(
                exporter._caption(
                    exporter.overlay(canvases.images[i], out["maps"][i, 0]),
                    f"{name}: {LABELS[pred]}\ntarget {LABELS[want]}",
                    pred == want,
                )
            )
    exporter._grid(tiles, 8).save(path)


def finetune_section(info: dict, version: str, base_config: dict) -> str:
    b, a = info["held_out_before"], info["held_out_after"]
    base_test = base_config["metrics"]["test"]
    rows = [
        ("perception accuracy (own map)", "perception_accuracy"),
        ("attention-branch accuracy", "attention_branch_accuracy"),
        ("answers the distractor's class", "answers_distractor"),
        ("share of attention on the target", "attention_on_target"),
        ("share of attention on the distractor", "attention_on_distractor"),
    ]
    return "\n".join(
        [
            f"## Fine-tuning from teacher maps (version {info['base_version']} -> {version})",
            "",
            "Seed 002's second embodiment: L = Latt + Lper + gamma ||M' - M||^2 "
            f"(gamma = {info['gamma']}), parts re-learned: {', '.join(info['trained_parts'])} "
            f"(the rest frozen, batch-norm statistics frozen), {info['epochs']} epochs, "
            f"lr {info['lr']}, {info['seconds'] / 60:.1f} min including export. Mixed in: "
            f"{info['replay_single_item_canvases']} single-item training canvases with Latt + "
            "Lper only (no teacher map). This replay is not in the seed; `--replay 0` "
            "turns it off.",
            "",
            f"Teacher records: {info['records_stored']} stored in `{info['feedback_db']}`, "
            f"{info['records_selected']} selected (`--select {info['selection']}`). They were "
            "made by `finetune simulate`, standing in for a person: distractor canvases (a "
            "large target item, the label, and a small item of another class, from training "
            "items over training photographs), the base model's answers and map, and as the "
            "edited map the target item's box. No person edited these maps.",
            "",
            (
                f"Version {info['base_version']} has no checkpoint of its own: it serves "
                f"version {info['checkpoint_version']}'s graphs, whose weights were the start. "
                if info.get("checkpoint_version", info["base_version"]) != info["base_version"]
                else ""
            )
            + f"The teacher records were letterboxed as version {info['base_version']} serves "
            f"them ({exporter.bars(base_config['preprocess'])}), and this version keeps that "
            "pre-processing; the figures below are on square canvases, so how this network "
            "does on non-square uploads with those bars was not measured "
            "(`python -m models.attention.nonsquare` does).",
            "",
            f"Held out: {info['held_out_distractor_canvases']} distractor canvases from test "
            "items over test photographs (label = the large item).",
            "",
            f"| held-out distractor canvases | before (v{info['base_version']}) | after "
            f"(v{version}) |",
            "|---|---|---|",
            *(f"| {name} | {b[k]:.4f} | {a[k]:.4f} |" for name, k in rows),
            "",
            f"Single-item test accuracy (perception): v{info['base_version']} "
            f"{base_test['perception_accuracy']:.4f}; this version: see the test table above.",
            "",
            "![before/after](finetune_before_after.png)",
            "",
            "![before/after examples](finetune_examples.png)",
            "",
            "Top row: the base model's map and answer; bottom row: the fine-tuned model's.",
            "",
        ]
    )


if __name__ == "__main__":
    main()
