"""Can the image evidence tell an absent partner from a present one?

A diagnostic for the co-occurrence hallucination. On the validation split's *partner trials*
(a companion is in the scene; its partner is there or not), it reads two detectors of the
partner and reports how well each separates present from absent:

- ``probe``: a logistic regression per category on the base model's projected image features
  (mean- and max-pooled tokens), fitted on training images: what the base model's vision
  encodes;
- ``vit`` (``--vit-epochs N``): the base model's own vision tower (its CLIP config, freshly
  initialised) trained directly to name the objects present, with a linear head on its
  max-pooled patch tokens: what that architecture can learn from these images when detection
  is its only objective;
- ``cnn`` (``--cnn-epochs N``): a small CNN trained from the pixels of the training images to
  name the objects present: roughly what the world's pixels allow a model of this size.

If a detector separates the trials far better than the model's descriptions do, the
information is there and fine-tuning can in principle use it; if not, the vision is the
bottleneck and no preference data can lower the absent-partner rate at the same recall.
``vit`` against ``probe`` separates the two causes a weak probe can have: the training signal
(descriptions and one-word answers) or the tower's architecture.
``absent_rate_at_recall_R`` is the detector's absent-partner rate at present-partner recall R,
to read beside the model's own pair (``present_partner_recall``, ``cooc_partner_rate``).

    .venv/bin/python scripts/probe_vision.py --train-images 8000 --val-images 2000 \\
        --vit-epochs 8 --cnn-epochs 8 --out data/08_reporting/probe_vision.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from torch import nn  # noqa: E402
from transformers import CLIPVisionModel, LevitConfig, LevitModel  # noqa: E402

from povid_kedro.experiments import deep_merge, project_parameters  # noqa: E402
from povid_kedro.metrics.cooccurrence import partner_categories  # noqa: E402
from povid_kedro.modeling import load_model_dir  # noqa: E402
from povid_kedro.modeling.vision import image_tokens  # noqa: E402
from povid_kedro.world import WorldConfig, generate_world, validation_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXTRA_SEED_KEY = 0x7669  # the extra ViT images' seed, derived from the world's


def pixel_values(processor: Any, images: list[Image.Image]) -> torch.Tensor:
    """The images as the base model's image processor feeds them to its vision tower."""
    return torch.cat(
        [
            processor.image_processor(images[i : i + 256], return_tensors="pt")["pixel_values"]
            for i in range(0, len(images), 256)
        ]
    )


@torch.inference_mode()
def model_features(model: Any, pixels: torch.Tensor) -> np.ndarray:
    """Mean- and max-pooled projected image tokens, one row per image."""
    rows = []
    for batch in pixels.split(64):
        out = model.get_image_features(
            pixel_values=batch,
            vision_feature_layer=model.config.vision_feature_layer,
            vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        )
        feats = getattr(out, "pooler_output", out)  # the projected image tokens
        feats = torch.stack(list(feats)) if isinstance(feats, list | tuple) else feats
        rows.append(torch.cat([feats.mean(1), feats.amax(1)], -1).float().numpy())
    return np.concatenate(rows)


def probe_scores(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray) -> np.ndarray:
    """Per-category probability of presence from a linear probe on standardised features."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_val = (x_train - mu) / sd, (x_val - mu) / sd
    cols = []
    for c in range(y_train.shape[1]):
        probe = LogisticRegression(C=1.0, max_iter=2000).fit(x_train, y_train[:, c])
        cols.append(probe.predict_proba(x_val)[:, 1])
    return np.stack(cols, 1)


def _tower(model: Any, kind: str) -> tuple[nn.Module, int, Any]:
    """A freshly initialised tower, its feature width and its image tokens of a batch.

    ``base``: the loaded base model's own tower (its config, whatever its kind), read at the
    layer the base model reads, so ``--save-vit`` weights load into that model's tower.
    ``clip``: the base model's own vision config (CLS dropped, as LLaVA's "default" feature
    strategy does). ``levit``: LeViT's four stride-2 conv + BatchNorm stem (16 px, 36 tokens of
    width 64) and its first attention stage, read after its subsampling (9 tokens of width 128,
    one per grid cell of the world), about the base tower's cost.
    """
    if kind == "base":
        tower = type(model.model.vision_tower)(model.config.vision_config)
        return tower, model.config.vision_config.hidden_size, image_tokens(tower, model.config)
    if kind == "clip":
        tower = CLIPVisionModel(model.config.vision_config)
        return (
            tower,
            tower.config.hidden_size,
            lambda p: tower(pixel_values=p).last_hidden_state[:, 1:],
        )
    size = model.config.vision_config.image_size
    cfg = LevitConfig(
        image_size=size,
        patch_size=16,
        hidden_sizes=[64, 128, 128],
        num_attention_heads=[4, 4, 4],
        depths=[2, 1, 1],
        key_dim=[16, 16, 16],
        mlp_ratio=[2, 2, 2],
        attention_ratio=[2, 2, 2],
    )
    tower = LevitModel(cfg)
    return tower, 128, lambda p: tower(pixel_values=p, output_hidden_states=True).hidden_states[1]


def vit_scores(
    model: Any, x: torch.Tensor, y_train: np.ndarray, xv: torch.Tensor, epochs: int, kind: str
) -> tuple[np.ndarray, nn.Module]:
    """Per-category probability of presence from a vision-tower architecture (``kind``, see
    :func:`_tower`), freshly initialised and trained on presence labels (AdamW, one-cycle lr
    1e-3, batch 64), with a linear head on its max-pooled image tokens; and the trained tower."""
    torch.manual_seed(0)
    tower, width, tokens = _tower(model, kind)
    head = nn.Linear(width, y_train.shape[1])
    y = torch.tensor(y_train, dtype=torch.float32)

    def logits(pixels: torch.Tensor) -> torch.Tensor:
        return head(tokens(pixels).amax(1))

    opt = torch.optim.AdamW([*tower.parameters(), *head.parameters()], 1e-3, weight_decay=0.01)
    per_epoch = len(x) // 64
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, 1e-3, total_steps=epochs * per_epoch, pct_start=0.05
    )
    loss = nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        tower.train()
        for b in torch.randperm(len(x))[: per_epoch * 64].split(64):
            opt.zero_grad()
            loss(logits(x[b]), y[b]).backward()
            opt.step()
            sched.step()
    tower.eval()
    with torch.inference_mode():
        return torch.sigmoid(torch.cat([logits(p) for p in xv.split(256)])).numpy(), tower


def extra_scenes(cfg: WorldConfig, n_images: int) -> tuple[list[dict[str, Any]], list[Image.Image]]:
    """``n_images`` more labelled images for the ViT: the world's evaluation distribution (its
    weaker co-occurrence prior) from a seed of their own, sharing no scene with any split."""
    seed = int(np.random.SeedSequence([cfg.seed, EXTRA_SEED_KEY]).generate_state(1)[0])
    world = generate_world(
        dataclasses.replace(cfg, seed=seed, n_train_images=1, n_eval_images=n_images)
    )
    scenes = world.scenes["eval"]
    return scenes, [world.eval_images[s["file_name"]] for s in scenes]


def cnn_scores(
    train: list[Image.Image], y_train: np.ndarray, val: list[Image.Image], epochs: int
) -> np.ndarray:
    """Per-category probability of presence from a small CNN trained on the pixels."""
    torch.manual_seed(0)

    def tensor(images: list[Image.Image]) -> torch.Tensor:
        return (
            torch.tensor(np.stack([np.asarray(i) for i in images]), dtype=torch.float32)
            .div(255)
            .permute(0, 3, 1, 2)
        )

    x, xv, y = tensor(train), tensor(val), torch.tensor(y_train, dtype=torch.float32)
    widths = (3, 32, 64, 64)
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:], strict=False):
        layers += [nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(2)]
    net = nn.Sequential(
        *layers,
        nn.Conv2d(64, 128, 3, padding=1),
        nn.BatchNorm2d(128),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(128, y.shape[1]),
    )
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    loss = nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        net.train()
        for b in torch.randperm(len(x)).split(128):
            opt.zero_grad()
            loss(net(x[b]), y[b]).backward()
            opt.step()
    net.eval()
    with torch.inference_mode():
        return torch.sigmoid(torch.cat([net(part) for part in xv.split(256)])).numpy()


def trial_report(
    scores: np.ndarray, y_val: np.ndarray, index: dict[str, int], partners: dict[str, str | None]
) -> dict[str, Any]:
    """How well the scores separate present from absent partners on the partner trials (the
    co-occurrence metric's: categories some present object usually comes with)."""
    names = sorted(index, key=index.__getitem__)
    by_category: dict[str, tuple[list[float], list[float]]] = {}
    for row, labels in enumerate(y_val):
        present = {names[j] for j in np.flatnonzero(labels)}
        for category in partner_categories(present, partners):
            j = index[category]
            by_category.setdefault(category, ([], []))[0 if labels[j] else 1].append(scores[row, j])
    per_category = {
        category: round(float(roc_auc_score([1] * len(here) + [0] * len(gone), [*here, *gone])), 3)
        for category, (here, gone) in sorted(by_category.items())
        if here and gone
    }
    pos = [np.asarray(here) for here, _ in by_category.values()]
    neg = [np.asarray(gone) for _, gone in by_category.values()]
    p_pos, p_neg = np.concatenate(pos), np.concatenate(neg)
    labels = np.r_[np.ones(len(p_pos)), np.zeros(len(p_neg))]
    out: dict[str, Any] = {
        "present_trials": len(p_pos),
        "absent_trials": len(p_neg),
        "partner_trials_auc": round(float(roc_auc_score(labels, np.r_[p_pos, p_neg])), 3),
        "all_images_auc": round(float(roc_auc_score(y_val, scores, average="macro")), 3),
    }
    for recall in (0.7, 0.8, 0.9):
        threshold = np.quantile(p_pos, 1 - recall)
        out[f"absent_rate_at_recall_{recall}"] = round(float((p_neg >= threshold).mean()), 3)
    out["auc_per_partner"] = per_category
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data")
    parser.add_argument("--train-images", type=int, default=8000)
    parser.add_argument("--val-images", type=int, default=2000)
    parser.add_argument("--vit-epochs", type=int, default=0, help="0: no ViT trained on labels")
    parser.add_argument(
        "--vit-extra-images",
        type=int,
        default=0,
        help="generated images the ViT also trains on (the probe and CNN do not)",
    )
    parser.add_argument(
        "--save-vit", type=Path, help="save the trained ViT's weights (a state dict) here"
    )
    parser.add_argument(
        "--tower",
        choices=("base", "clip", "levit"),
        default="clip",
        help="the architecture --vit-epochs trains: the base model's own tower (base), its CLIP "
        "config, or a LeViT",
    )
    parser.add_argument(
        "--world",
        type=json.loads,
        default=None,
        help="JSON overrides of embedded_world: the training and validation images are "
        "generated in memory from the changed world instead of read from --data",
    )
    parser.add_argument("--cnn-epochs", type=int, default=0, help="0: no CNN ceiling")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    world_params = project_parameters()["embedded_world"]
    cfg = WorldConfig.from_dict(deep_merge(world_params, args.world or {}))
    world_dir = args.data / "01_raw" / "world"
    if args.world:
        changed = generate_world(
            dataclasses.replace(cfg, n_train_images=args.train_images, n_eval_images=1)
        )
        partners = changed.meta["partners"]
        scenes = changed.scenes["train"]
    else:
        partners = json.loads((world_dir / "partners.json").read_text())
        scenes = json.loads((world_dir / "scenes.json").read_text())["train"][: args.train_images]
    val = generate_world(validation_config(cfg, args.val_images))
    val_scenes = val.scenes["eval"]
    more_scenes, more_images = (
        extra_scenes(cfg, args.vit_extra_images) if args.vit_extra_images else ([], [])
    )
    names = sorted(
        {o["category"] for s in scenes + val_scenes + more_scenes for o in s["objects"]}
        | set(partners)
    )
    index = {name: i for i, name in enumerate(names)}

    def labels(rows: list[dict[str, Any]]) -> np.ndarray:
        y = np.zeros((len(rows), len(names)), dtype=np.int64)
        for i, scene in enumerate(rows):
            for obj in scene["objects"]:
                y[i, index[obj["category"]]] = 1
        return y

    y_train, y_val = labels(scenes), labels(val_scenes)
    train_images = [
        changed.train_images[s["file_name"]]
        if args.world
        else Image.open(world_dir / "train2014" / s["file_name"]).convert("RGB")
        for s in scenes
    ]
    val_images = [val.eval_images[s["file_name"]] for s in val_scenes]

    model, processor = load_model_dir(args.data / "06_models" / "base_model")
    model.eval()
    report: dict[str, Any] = {
        "train_images": len(scenes),
        "val_images": len(val_scenes),
        "world_overrides": args.world or {},
    }
    # Preprocessed once: the probe and the ViT read the same pixel values.
    x_train, x_val = pixel_values(processor, train_images), pixel_values(processor, val_images)
    scores = probe_scores(model_features(model, x_train), y_train, model_features(model, x_val))
    report["probe"] = trial_report(scores, y_val, index, partners)
    if args.vit_epochs:
        x_vit, y_vit = x_train, y_train
        if more_images:
            x_vit = torch.cat([x_train, pixel_values(processor, more_images)])
            y_vit = np.concatenate([y_train, labels(more_scenes)])
        scores, tower = vit_scores(model, x_vit, y_vit, x_val, args.vit_epochs, args.tower)
        report["vit"] = {
            "tower": args.tower,
            "epochs": args.vit_epochs,
            "train_images": len(x_vit),
            **trial_report(scores, y_val, index, partners),
        }
        if args.save_vit:
            torch.save(tower.state_dict(), args.save_vit)
    if args.cnn_epochs:
        scores = cnn_scores(train_images, y_train, val_images, args.cnn_epochs)
        report["cnn"] = {"epochs": args.cnn_epochs, **trial_report(scores, y_val, index, partners)}
    text = json.dumps(report, indent=1)
    print(text)  # noqa: T201
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
