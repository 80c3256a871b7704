"""Qwen2-VL / Qwen2.5-VL image preprocessing: PIL + numpy, no torch.

``preprocess(image, pcfg)`` returns ``(patches float32[t*h*w, 3*2*14*14], grid_thw int32[3])``
for the vision tower; ``grid_for_size`` / ``num_image_tokens`` give the grid and the LLM
token count from the image size alone (no pixel decoding), e.g. to size sequences from
image headers.

What it reproduces
------------------
``transformers.Qwen2VLImageProcessor`` as installed here (transformers 5.x). Without
torchvision it resolves to ``Qwen2VLImageProcessorPil`` (``image_processing_pil_qwen2_vl.py``
on the PIL/NumPy ``PilBackend``), whose pipeline we follow step by step:

1. ``do_convert_rgb``: ``image.convert("RGB")``, except images with an alpha band or
   palette transparency, which are composited onto **white** first
   (``transformers.image_transforms.convert_to_rgb``; Qwen's own ``qwen_vl_utils`` also
   pastes RGBA onto white).
2. ``smart_resize`` (below) picks ``(h, w)``, multiples of ``patch_size * merge_size``
   with ``min_pixels <= h*w <= max_pixels`` (nearly always), aspect ratio kept as far as
   possible; then ``PIL.Image.resize((w, h), BICUBIC)`` on the **uint8** RGB image (no
   ``reducing_gap``; called even when the size is unchanged, which is a copy).
3. rescale **after** the resize: ``uint8 -> float64 * (1/255) -> float32``.
4. normalize in float32 with OPENAI CLIP mean/std: ``(x - mean) / std``.
5. a still image is repeated to ``temporal_patch_size`` frames (``grid_t = 1``) and cut into
   ``patch_size`` squares; rows are ordered ``(t, h/merge, w/merge, merge_h, merge_w)`` --
   each run of ``merge_size**2`` consecutive rows is one 2x2 block the merger folds into one
   LLM token -- and each row is flattened ``(channel, temporal, patch_h, patch_w)``.

The torchvision backend (``image_processing_qwen2_vl.py``) resizes with torch's bicubic
instead and differs from PIL by small amounts; the tests compare against the PIL class.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "ProcessorConfig",
    "default_buckets",
    "grid_for_size",
    "num_image_tokens",
    "pad_patches",
    "patch_bucket",
    "preprocess",
    "smart_resize",
]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_ASPECT_RATIO = 200


# ------------------------------------------------------------------------ config
@dataclasses.dataclass(frozen=True)
class ProcessorConfig:
    """Image-processor settings; defaults are Qwen2.5-VL's ``preprocessor_config.json``."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 3136          # 56 * 56
    max_pixels: int = 12845056      # 28 * 28 * 16384
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    rescale_factor: float = 1 / 255
    resample: int = int(Image.Resampling.BICUBIC)

    def __post_init__(self):
        for name in ("patch_size", "temporal_patch_size", "merge_size", "min_pixels", "max_pixels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (0 if name == "min_pixels" else 1):
                raise ValueError(f"ProcessorConfig.{name} must be a positive int, got {v!r}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"ProcessorConfig: min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")
        for name in ("image_mean", "image_std"):
            v = tuple(float(x) for x in getattr(self, name))
            if len(v) != 3:
                raise ValueError(f"ProcessorConfig.{name} needs 3 values (RGB), got {v}")
            object.__setattr__(self, name, v)
        if any(s == 0 for s in self.image_std):
            raise ValueError(f"ProcessorConfig.image_std has a zero: {self.image_std}")

    @property
    def factor(self) -> int:
        """Resized sides are multiples of this (one merged token covers factor x factor pixels)."""
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        """Values per patch row: ``3 * temporal_patch_size * patch_size**2`` (1176)."""
        return 3 * self.temporal_patch_size * self.patch_size * self.patch_size

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> ProcessorConfig:
        """Read a ``preprocessor_config.json`` dict.

        Pixel bounds come from ``min_pixels``/``max_pixels`` or from
        ``size: {"shortest_edge", "longest_edge"}`` (newer configs); as in HF's
        ``__init__``, top-level ``min_pixels``/``max_pixels`` win over ``size``. Switches
        this pipeline does not implement (``do_resize: false`` ...) are an error rather
        than silently ignored.
        """
        for flag in ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb"):
            if flag in d and d[flag] is not None and not d[flag]:
                raise ValueError(f"preprocessor_config {flag}={d[flag]!r} is not supported "
                                 "(this processor always converts, resizes, rescales and normalizes)")
        default = cls()
        size = d.get("size") or {}
        if not isinstance(size, Mapping):
            raise ValueError(f"preprocessor_config 'size' must be a dict, got {size!r}")

        def pick(top: str, size_keys: tuple[str, ...], fallback):
            if d.get(top) is not None:
                return int(d[top])
            for k in size_keys:
                if size.get(k) is not None:
                    return int(size[k])
            return fallback

        kw: dict[str, Any] = {
            "min_pixels": pick("min_pixels", ("shortest_edge", "min_pixels"), default.min_pixels),
            "max_pixels": pick("max_pixels", ("longest_edge", "max_pixels"), default.max_pixels),
        }
        for k in ("patch_size", "temporal_patch_size", "merge_size"):
            if d.get(k) is not None:
                kw[k] = int(d[k])
        for k in ("image_mean", "image_std"):
            if d.get(k) is not None:
                v = d[k]
                kw[k] = tuple(v) if isinstance(v, Sequence) else (float(v),) * 3
        if d.get("rescale_factor") is not None:
            kw["rescale_factor"] = float(d["rescale_factor"])
        if d.get("resample") is not None:
            kw["resample"] = int(d["resample"])
        return cls(**kw)


# ------------------------------------------------------------------------ sizing
def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 28 * 28 * 1280) -> tuple[int, int]:
    """``(h, w)``, HF's ``smart_resize`` (``image_processing_pil_qwen2_vl.py``) exactly.

    Both sides become multiples of ``factor`` (Python's ``round``, i.e. half to even);
    if the area leaves ``[min_pixels, max_pixels]`` the image is scaled by ``beta`` and
    floored (too big, at least ``factor``) or ceiled (too small). Tiny images are scaled
    up, not refused (transformers 4.4x raised when a side was under ``factor``; the
    version here does not). ``ValueError`` for an aspect ratio above 200 (as HF), for
    non-positive sides and for a zero-sized result (only possible with ``min_pixels=0``;
    HF would fail later inside PIL).
    """
    if not (isinstance(height, (int, np.integer)) and isinstance(width, (int, np.integer))) or height < 1 or width < 1:
        raise ValueError(f"image size {width}x{height} (width x height): sides must be positive ints")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(f"image size {width}x{height} (width x height): absolute aspect ratio must be "
                         f"at most {MAX_ASPECT_RATIO}, got {ratio:.1f}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    if h_bar < factor or w_bar < factor:
        raise ValueError(f"image size {width}x{height} (width x height) resizes to {w_bar}x{h_bar}, "
                         f"below one {factor}-pixel block; raise min_pixels")
    return int(h_bar), int(w_bar)


def grid_for_size(width: int, height: int, pcfg: ProcessorConfig = ProcessorConfig()) -> tuple[int, int, int]:
    """``(t, h, w)`` in patches for an image of ``width x height`` pixels (PIL's
    ``image.size`` order), without decoding it; ``t = 1`` for a still image."""
    rh, rw = smart_resize(int(height), int(width), pcfg.factor, pcfg.min_pixels, pcfg.max_pixels)
    return 1, rh // pcfg.patch_size, rw // pcfg.patch_size


def num_image_tokens(width: int, height: int, pcfg: ProcessorConfig = ProcessorConfig()) -> int:
    """LLM tokens (``<|image_pad|>`` copies) for one image: ``t*h*w // merge_size**2``."""
    t, h, w = grid_for_size(width, height, pcfg)
    return t * h * w // (pcfg.merge_size ** 2)


# --------------------------------------------------------------------- pixels
def _to_rgb(image: Image.Image) -> Image.Image:
    # transformers.image_transforms.convert_to_rgb: alpha is composited onto white
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def preprocess(image: Image.Image, pcfg: ProcessorConfig = ProcessorConfig()) -> tuple[np.ndarray, np.ndarray]:
    """``(patches float32[t*h*w, patch_dim], grid_thw int32[3])`` for one PIL image,
    equal to ``Qwen2VLImageProcessor(...)(image)``'s ``pixel_values`` / ``image_grid_thw``
    (see the module docstring for the steps)."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"preprocess takes a PIL image, got {type(image).__name__}")
    from mmalign_jax.data.images import check_pixels
    check_pixels(image.size, "given to preprocess")   # the pixel budget, before decoding
    rgb = _to_rgb(image)
    width, height = rgb.size
    rh, rw = smart_resize(height, width, pcfg.factor, pcfg.min_pixels, pcfg.max_pixels)
    resized = rgb.resize((rw, rh), resample=pcfg.resample)
    x = np.asarray(resized)                                               # uint8 [H, W, 3]
    x = (x.astype(np.float64) * pcfg.rescale_factor).astype(np.float32)   # HF rescale
    x = (x - np.asarray(pcfg.image_mean, np.float32)) / np.asarray(pcfg.image_std, np.float32)
    x = x.transpose(2, 0, 1)                                              # [C, H, W]

    p, m, tp = pcfg.patch_size, pcfg.merge_size, pcfg.temporal_patch_size
    frames = np.repeat(x[None], tp, axis=0)                               # [T, C, H, W]
    grid_t, grid_h, grid_w = frames.shape[0] // tp, rh // p, rw // p
    c = frames.shape[1]
    patches = frames.reshape(grid_t, tp, c, grid_h // m, m, p, grid_w // m, m, p)
    # -> (grid_t, h/m, w/m, m_h, m_w, C, T, p_h, p_w)
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = np.ascontiguousarray(patches.reshape(grid_t * grid_h * grid_w, c * tp * p * p), dtype=np.float32)
    return flat, np.asarray([grid_t, grid_h, grid_w], np.int32)


# ------------------------------------------------------------- padding, buckets
def pad_patches(patches: np.ndarray, n: int) -> np.ndarray:
    """``float32[n, D]``: ``patches`` followed by zero rows (to a bucket size, so batches
    of mixed image sizes share a few compiled shapes)."""
    patches = np.asarray(patches)
    if patches.ndim != 2:
        raise ValueError(f"pad_patches expects [n_patches, D], got shape {patches.shape}")
    if n < patches.shape[0]:
        raise ValueError(f"pad_patches: cannot pad {patches.shape[0]} patches to {n} (fewer)")
    out = np.zeros((int(n), patches.shape[1]), np.float32)
    out[: patches.shape[0]] = patches
    return out


def patch_bucket(n_patches: int, buckets: Sequence[int], *, image_size: tuple[int, int] | None = None) -> int:
    """The smallest bucket ``>= n_patches``. ``image_size=(width, height)`` only makes the
    error name the image when none fits."""
    if not buckets:
        raise ValueError("patch_bucket: no buckets given")
    fits = [int(b) for b in buckets if int(b) >= n_patches]
    if not fits:
        what = f"image {image_size[0]}x{image_size[1]} (width x height)" if image_size else "the input"
        raise ValueError(f"{what} needs {n_patches} patches, more than the largest bucket "
                         f"({max(int(b) for b in buckets)}); lower max_pixels or add a larger bucket")
    return min(fits)


def default_buckets(pcfg: ProcessorConfig, max_patches: int) -> list[int]:
    """Patch budgets ``16 * merge_size**2 * 2**k`` below ``max_patches``, then ``max_patches``
    (``[64, 128, 256, ..., max_patches]`` for merge_size 2).

    Every image pads to the next bucket, so a dataset of mixed sizes compiles at most
    ``len(buckets)`` vision programs while padding wastes under half of a bucket (plus
    the fixed 64-patch floor for tiny images). All buckets are multiples of
    ``merge_size**2``, the granularity of the merger; so must ``max_patches`` be.
    """
    unit = pcfg.merge_size ** 2
    max_patches = int(max_patches)
    if max_patches < unit or max_patches % unit:
        raise ValueError(f"max_patches must be a positive multiple of merge_size**2 = {unit}, got {max_patches}")
    out, b = [], 16 * unit
    while b < max_patches:
        out.append(b)
        b *= 2
    return out + [max_patches]
