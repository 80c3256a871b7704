"""A pretrained vision encoder for the demo model, made in seconds from the demo's own scenes.

LLaVA starts from a pretrained CLIP; the demo cannot download one. Trained from scratch
through the language-model loss alone, the tiny ViT learned almost nothing in the demo's
budget: its projected features collapsed to a large constant (norm ≈ 38 against ≈ 4 of
image-dependent signal after 200 SFT steps) and greedy answers were at chance on colour and
existence. So, as CLIP is pretrained on images before LLaVA is built on it, the demo's
`VisionTower` is pretrained here with linear heads on the features LLaVA reads
(`vision_feature_layer`), then handed to the SFT stage (`model.vision_init`). The heads
(`HEADS`) ask what each grid cell holds — its shape, its colour, and the two together as one
object class (or nothing) — and where the cell is (its row and column), because CLIP's
patch features carry both what and where, and the position and existence questions need
where and the colour-shape conjunction: with shape and colour heads only, the demo SFT
model's greedy answers were right on 0.28 of held-out position questions, and its DPO
policy ranked the right position above the wrong one in about half the held-out pairs
(chance). The heads are thrown away; the language model still has to learn to read the
features, from the SFT data.

With the `tiny` preset (48-px images, 16-px patches) every image token is exactly one cell.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from mmalign_jax.data.images import preprocess
from mmalign_jax.models.vision import VisionTower

from .generate import record_image
from .shapes import COLOR_NAMES, GRID, SHAPES, Scene

log = logging.getLogger("mmalign_jax.demo")

PARAMS_FILE = "vision_tower.msgpack"


# head name -> number of classes (0 = empty cell for the content heads)
HEADS = {"shape": len(SHAPES) + 1, "colour": len(COLOR_NAMES) + 1,
         "object": len(SHAPES) * len(COLOR_NAMES) + 1, "row": GRID, "col": GRID}


def cell_labels(scene: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """(shape, colour) class per grid cell in row-major order; 0 = empty cell."""
    s = Scene.from_json(scene)
    shape = np.zeros(GRID * GRID, np.int32)
    colour = np.zeros(GRID * GRID, np.int32)
    for o in s.objects:
        shape[o.row * GRID + o.col] = SHAPES.index(o.shape) + 1
        colour[o.row * GRID + o.col] = COLOR_NAMES.index(o.color) + 1
    return shape, colour


def head_labels(scene: Mapping) -> dict[str, np.ndarray]:
    """The class of every grid cell (row-major) for each head of `HEADS`."""
    shape, colour = cell_labels(scene)
    obj = np.where(shape > 0, (shape - 1) * len(COLOR_NAMES) + colour, 0).astype(np.int32)
    cell = np.arange(GRID * GRID, dtype=np.int32)
    return {"shape": shape, "colour": colour, "object": obj, "row": cell // GRID,
            "col": cell % GRID}


def _examples(records: Iterable[Mapping], image_size: int, image_mode: str):
    pix, labels = [], {h: [] for h in HEADS}
    for r in records:
        scene = (r.get("meta") or {}).get("scene")
        if scene is None:
            continue
        pix.append(preprocess(record_image(dict(r), size=64), image_size, image_mode))
        for h, y in head_labels(scene).items():
            labels[h].append(y)
    if not pix:
        raise ValueError("no demo records with meta.scene to pretrain the vision tower on")
    return np.stack(pix), {h: np.stack(y) for h, y in labels.items()}


def _cells_per_token(cfg) -> int:
    v = cfg.vision
    side = v.image_size // v.patch_size
    if side % GRID:
        raise ValueError(f"vision pretraining needs a patch grid that tiles the {GRID}×{GRID} "
                         f"scene grid; {v.image_size}/{v.patch_size} gives {side}×{side} patches")
    return side // GRID


def pretrain(cfg, records: Sequence[Mapping], *, steps: int = 300, batch_size: int = 64,
             lr: float = 3e-3, seed: int = 0, image_mode: str = "pad",
             init_params=None) -> tuple[dict, dict]:
    """(vision_tower params, metrics): per-cell classification by every head of `HEADS`,
    from scratch (or from `init_params`). Metrics hold the held-out (last 10 %) accuracies."""
    pix, labels = _examples(records, cfg.vision.image_size, image_mode)
    k = _cells_per_token(cfg)
    n_eval = max(1, len(pix) // 10)
    tower = VisionTower(cfg)
    key = jax.random.PRNGKey(seed)
    k_init, k_heads, k_data = jax.random.split(key, 3)
    params = init_params if init_params is not None else tower.init(
        k_init, jnp.zeros((1, *pix.shape[1:]), jnp.float32))["params"]
    params = jax.tree.map(lambda x: getattr(x, "value", x), params,
                          is_leaf=lambda x: hasattr(x, "value"))
    d = cfg.vision.hidden_size
    heads = {h: jax.random.normal(kh, (d, n)) * d ** -0.5
             for (h, n), kh in zip(HEADS.items(), jax.random.split(k_heads, len(HEADS)))}
    state = {"tower": params, "heads": heads}
    opt = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 20), steps),
                      weight_decay=0.0)
    opt_state = opt.init(state)

    def cells(feats):  # [N, side*side, D] -> [N, 9, D] (mean over each cell's patches)
        n, t, dd = feats.shape
        f = feats.reshape(n, GRID, k, GRID, k, dd).mean(axis=(2, 4))
        return f.reshape(n, GRID * GRID, dd)

    def loss_fn(state, x, ys):
        f = cells(tower.apply({"params": state["tower"]}, x))
        return sum(optax.softmax_cross_entropy_with_integer_labels(
            f @ state["heads"][h], ys[h]).mean() for h in HEADS)

    @jax.jit
    def step(state, opt_state, x, ys):
        loss, g = jax.value_and_grad(loss_fn)(state, x, ys)
        upd, opt_state = opt.update(g, opt_state, state)
        return optax.apply_updates(state, upd), opt_state, loss

    @jax.jit
    def accuracy(state, x, ys):
        f = cells(tower.apply({"params": state["tower"]}, x))
        return {h: jnp.mean(jnp.argmax(f @ state["heads"][h], -1) == ys[h]) for h in HEADS}

    n_train = len(pix) - n_eval
    rng = np.random.default_rng(np.asarray(jax.random.key_data(k_data))[-1])
    loss = float("nan")
    for _ in range(steps):
        idx = rng.integers(0, n_train, batch_size)
        state, opt_state, loss = step(state, opt_state, pix[idx],
                                      {h: y[idx] for h, y in labels.items()})
    acc = accuracy(state, pix[n_train:], {h: y[n_train:] for h, y in labels.items()})
    metrics = {"loss": float(loss), **{f"eval/{h}_accuracy": float(a) for h, a in acc.items()},
               "steps": steps, "examples": int(n_train), "eval_examples": int(n_eval)}
    log.info("vision pretraining: %s", metrics)
    return state["tower"], metrics


def pretrained_vision_tower(cfg, records_path: str, out_dir: str, **kw) -> dict:
    """Pretrain once into `out_dir` (reused on rerun; returns the saved params)."""
    path = os.path.join(out_dir, PARAMS_FILE)
    template = jax.eval_shape(
        lambda: VisionTower(cfg).init(jax.random.PRNGKey(0), jnp.zeros(
            (1, cfg.vision.image_size, cfg.vision.image_size, 3)))["params"])
    template = jax.tree.map(lambda x: getattr(x, "value", x), template,
                            is_leaf=lambda x: hasattr(x, "value"))
    if os.path.exists(path):
        with open(path, "rb") as f:
            return serialization.from_bytes(
                jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template), f.read())
    with open(records_path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    params, metrics = pretrain(cfg, records, **kw)
    os.makedirs(out_dir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(serialization.to_bytes(jax.device_get(params)))
    os.replace(tmp, path)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    return jax.device_get(params)
