"""CLIP image preprocessing for LLaVA, channels last.

``preprocess(image, size, mode)`` returns ``float32[size, size, 3]`` ready for the vision
tower (``pixel_values[b, i]`` in ``models/llava/model.py``).

What it reproduces
------------------
``transformers.CLIPImageProcessor`` as installed here (transformers 5.x). Without
torchvision, ``CLIPImageProcessor(...)`` resolves to ``CLIPImageProcessorPil`` (the
PIL/NumPy backend; it logs a warning saying so). Its pipeline, which we follow step by
step, is:

1. ``do_convert_rgb``: ``image.convert("RGB")`` -- *except* images with an alpha band or
   palette transparency, which transformers composites onto **white**. LLaVA instead
   loads every image with ``Image.open(path).convert('RGB')``, which **drops alpha** (the
   colour under a transparent pixel shows through). We match LLaVA (the checkpoints were
   trained that way); feeding an RGBA image straight to ``CLIPImageProcessor`` therefore
   differs from us on transparent pixels, by design.
2. resize so the shortest edge is ``size``: target ``(h, w)`` computed as
   ``transformers.image_transforms.get_resize_output_image_size`` does
   (``new_long = int(size * long / short)``), then ``PIL.Image.resize`` on the uint8 RGB
   image with ``resample`` (bicubic), no ``reducing_gap``.
3. center crop ``size x size`` (``top = (h - size) // 2``, ``left = (w - size) // 2``).
4. rescale: ``uint8 -> float64 * (1/255) -> float32``.
5. normalize in float32: ``(x - mean) / std``.

Outputs are bit-identical to the processor's (transposed to channels last) for images
below the large-image threshold; the tests check ``|delta| <= 1e-5``.

Modes
-----
- ``'crop'``: the plain processor (steps 1-5).
- ``'pad'``: LLaVA-1.5's ``expand2square`` first: the image is pasted onto a square canvas
  of side ``max(w, h)`` filled with ``tuple(int(m * 255) for m in mean)`` (``(122, 116,
  104)`` for CLIP), at ``(0, (w - h) // 2)`` when wider than tall and ``((h - w) // 2, 0)``
  when taller, then the processor runs (the crop is then a no-op). This is what the paper
  and LLaVA-1.5 use (``image_aspect_ratio='pad'``).
- ``'resize'``: squash to ``size x size`` with ``resample`` (no aspect preservation, no
  crop); equals ``CLIPImageProcessor(size={'height': s, 'width': s},
  do_center_crop=False)``.

Image modes
-----------
Everything goes through ``Image.convert('RGB')`` as LLaVA does (grayscale ``L``/``1``
replicated, ``LA``/``RGBA``/``PA`` alpha dropped, ``P`` through its palette with any
transparency ignored, ``CMYK``/``YCbCr``/... by PIL's conversion), with one deliberate
exception: 16-bit and 32-bit integer (``I;16*``, ``I``) and float (``F``) images, which
PIL's ``convert`` *saturates* at 255 (a 16-bit PNG becomes almost all white). Those are
scaled to 8 bit first: ``I;16*`` by ``round(v / 257)``; ``I`` as 8-bit if its maximum is
<= 255, else as 16-bit (clipped to 0..65535); ``F`` multiplied by 255 if its range is
within [0, 1], else clipped to 0..255.

Pixel budget
------------
An image over ``max_image_pixels()`` pixels -- 100 MP by default, above any camera's photo;
``MMALIGN_JAX_MAX_IMAGE_PIXELS`` sets another budget, ``0`` none -- is refused from its
header, before anything is decoded (``ImageTooLarge``, an ``ImageLoadError``): a 17 KB PNG
can declare 12000x12000 pixels and take 1.3 GB to preprocess, one file enough to exhaust a
host running a data-loader worker per core. ``load_image``, ``preprocess``, the Qwen2.5-VL
processor and the records' image check (``records.validate_record``, so a dataset build
rejects such a record, named and counted) all apply it. Above 2 x PIL's own
``Image.MAX_IMAGE_PIXELS`` (179 MP) PIL refuses to open the file whatever the budget.

EXIF orientation is applied first (``ImageOps.exif_transpose``) unless
``exif_transpose=False``. Neither LLaVA nor the HF processor do this; a photo stored
sideways with an orientation tag is shown upright by every viewer (and to the Gemini
annotator), so we feed the model the upright image.

Very large images
-----------------
The processor's cost grows with the source pixel count (and in ``'pad'`` mode with
``max(w, h)**2``, the canvas). When the edge that sets the scale -- the shortest edge for
``'crop'``, the canvas side ``max(w, h)`` for ``'pad'``, each edge for ``'resize'`` --
exceeds ``reduce_above * size`` (default 16x), the image is first shrunk by an integer box
filter (``Image.reduce(k)``, ``k = edge // (8 * size)``, so the bicubic step still
downsamples >= 8x), then resized with a ``box`` that keeps the exact output geometry
(PIL's own ``reducing_gap`` scheme). In ``'pad'`` mode the reduced canvas is built from the
reduced image (block-aligned, identical to reducing the full canvas), so the full-size
canvas is never allocated. Results then differ from the exact processor by a few uint8
levels at most (tests: <= 4 levels, mean <= 0.5 level on photo-like content). At or below
the threshold -- e.g. a 3000x200 image padded to a 3000x3000 canvas at size 224 or 336 --
the output is exact. ``reduce_above=None`` disables it. Extreme aspect ratios in
``'crop'`` mode are not reduced (their shortest edge is small) and resize to an
intermediate of ``size x size*aspect`` pixels before the crop, as the processor does.
"""
from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterable, Sequence
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_MAX_PIXELS",
    "MAX_PIXELS_ENV",
    "MODES",
    "ImageLoadError",
    "ImageTooLarge",
    "background_color",
    "check_pixels",
    "expand2square",
    "load_image",
    "max_image_pixels",
    "open_checked",
    "pixel_budget_problem",
    "preprocess",
    "preprocess_batch",
    "to_rgb",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MODES = ("pad", "crop", "resize")
_RESCALE = 1 / 255  # transformers' rescale_factor (float64 0.00392156862745098)

_DECODE_ERRORS = (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError)

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image]


class ImageLoadError(ValueError):
    """An image file or buffer could not be opened or decoded; the message names it."""


class ImageTooLarge(ImageLoadError):
    """The image's header declares more pixels than the budget (module docstring)."""


DEFAULT_MAX_PIXELS = 100_000_000
MAX_PIXELS_ENV = "MMALIGN_JAX_MAX_IMAGE_PIXELS"


def max_image_pixels() -> int:
    """The pixel budget per image: ``$MMALIGN_JAX_MAX_IMAGE_PIXELS`` when set (``0``: no
    budget), else ``DEFAULT_MAX_PIXELS``. Read at each call, so data-loader worker processes
    and a test's ``monkeypatch.setenv`` see the same value as the main process."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        raise ValueError(f"{MAX_PIXELS_ENV}={raw!r}: give a number of pixels (0: no budget)") from None
    if value < 0:
        raise ValueError(f"{MAX_PIXELS_ENV}={raw!r}: give a number of pixels >= 0 (0: no budget)")
    return value


def pixel_budget_problem(size: tuple[int, int], max_pixels: int | None = None) -> str | None:
    """What is wrong with an image of ``size = (width, height)`` under the budget
    (``max_pixels``, default ``max_image_pixels()``; 0 = none), or None: "is 12000x12000 =
    144.0 MP, over the budget of ... per image; ..."."""
    limit = max_image_pixels() if max_pixels is None else int(max_pixels)
    width, height = size
    if not limit or width * height <= limit:
        return None
    return (f"is {width}x{height} = {width * height / 1e6:.1f} MP, over the budget of "
            f"{limit / 1e6:g} MP per image (decoding it alone would take "
            f"{width * height * 3 / 2**30:.2f} GiB as RGB); downscale it, or raise the budget "
            f"with {MAX_PIXELS_ENV}=N pixels (0: none)")


def check_pixels(size: tuple[int, int], label: str, max_pixels: int | None = None) -> None:
    """Raise ``ImageTooLarge`` ("image <label> is WxH = ...") when ``size`` is over the budget
    (``pixel_budget_problem``). Call it on a header-only ``Image.open``, before ``load()``."""
    problem = pixel_budget_problem(size, max_pixels)
    if problem:
        raise ImageTooLarge(f"image {label} {problem}")


def open_checked(fp, label: str, max_pixels: int | None = None) -> Image.Image:
    """``Image.open(fp)`` -- the header only, nothing decoded -- with the pixel budget
    checked (``ImageTooLarge``, the file closed). PIL's own ``DecompressionBombWarning`` is
    silenced: the budget decides."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(fp)
    try:
        check_pixels(image.size, label, max_pixels)
    except ImageTooLarge:
        image.close()
        raise
    return image


# --------------------------------------------------------------------------- loading
def load_image(source: ImageSource, *, name: str | None = None) -> Image.Image:
    """Open and fully decode an image from a path or encoded bytes.

    Returns the decoded ``PIL.Image`` as stored (original mode, EXIF kept; ``preprocess``
    handles both). The pixels are loaded eagerly, so a truncated or corrupt file fails
    here, not later. Errors name the file (or ``name``, e.g. a record id, for bytes):
    ``FileNotFoundError`` for a missing path, ``ImageLoadError`` for anything PIL cannot
    decode, ``ImageTooLarge`` (from the header, before decoding) for an image over the
    pixel budget. A ``PIL.Image`` passes through unchanged.
    """
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return _decode(data, name or f"<{len(data)} bytes>")
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        label = f"{path} ({name})" if name else path
        if not os.path.exists(path):
            raise FileNotFoundError(f"image file not found: {label}")
        if os.path.isdir(path):
            raise ImageLoadError(f"cannot decode image {label}: it is a directory")
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ImageLoadError(f"cannot read image {label}: {e}") from e
        return _decode(data, label)
    raise TypeError(
        f"load_image expects a path, bytes or PIL.Image, got {type(source).__name__}"
        + (f" ({name})" if name else "")
    )


def _decode(data: bytes, label: str) -> Image.Image:
    # Decoding from memory leaves no file handle open and keeps every format's metadata
    # (EXIF, TIFF tags) on the returned image.
    if not data:
        raise ImageLoadError(f"cannot decode image {label}: empty file")
    try:
        image = open_checked(io.BytesIO(data), label)
        image.load()
    except _DECODE_ERRORS as e:
        if isinstance(e, ImageTooLarge):
            raise
        raise ImageLoadError(f"cannot decode image {label}: {e}") from e
    return image


# ------------------------------------------------------------------- mode conversion
def to_rgb(image: Image.Image) -> Image.Image:
    """Convert to 8-bit RGB as LLaVA does (``convert('RGB')``, alpha dropped), except that
    high-bit-depth integer/float images are scaled, not saturated (see module docs)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(image)
        if mode == "F":
            a = a.astype(np.float64)
            finite = a[np.isfinite(a)]
            if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
                a = a * 255.0
            a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
            a8 = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        else:
            a = a.astype(np.int64)
            if mode == "I" and (a.size == 0 or a.max() <= 255):
                a8 = np.clip(a, 0, 255).astype(np.uint8)
            else:
                a = np.clip(a, 0, 65535)
                a8 = ((a * 255 + 32767) // 65535).astype(np.uint8)  # round(v / 257)
        return Image.fromarray(a8, mode="L").convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as e:
        raise ValueError(f"cannot convert image mode {mode!r} to RGB: {e}") from e


# --------------------------------------------------------------------------- helpers
def background_color(mean: Sequence[float] = CLIP_MEAN) -> tuple[int, ...]:
    """LLaVA's pad colour: ``tuple(int(x * 255) for x in image_mean)``."""
    return tuple(int(x * 255) for x in mean)


def expand2square(image: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """LLaVA-1.5's ``expand2square`` (llava/train/train.py), unchanged."""
    width, height = image.size
    if width == height:
        return image
    if width > height:
        result = Image.new(image.mode, (width, width), background)
        result.paste(image, (0, (width - height) // 2))
        return result
    result = Image.new(image.mode, (height, height), background)
    result.paste(image, ((height - width) // 2, 0))
    return result


def _shortest_edge_size(height: int, width: int, size: int) -> tuple[int, int]:
    """``get_resize_output_image_size(..., default_to_square=False)`` -> (h, w)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def _reduction(edge: int, size: int, reduce_above: float | None) -> int:
    if reduce_above is None or edge <= reduce_above * size:
        return 1
    return max(1, edge // (8 * size))


def _reduce(image: Image.Image, kx: int, ky: int):
    """``image.reduce((kx, ky))`` and the box, in reduced pixels, that covers exactly the
    original image (the last block may be partial). Resizing the reduced image with that
    box keeps the exact geometry of resizing the original -- what PIL's own
    ``resize(reducing_gap=...)`` does."""
    w, h = image.size
    if kx == 1 and ky == 1:
        return image, None
    return image.reduce((kx, ky)), (0.0, 0.0, w / kx, h / ky)


def _reduced_square(image: Image.Image, k: int, background: tuple[int, ...]):
    """``expand2square(image).reduce(k)`` without building the full-size canvas.

    The image is first padded with the background so that its offset inside the canvas and
    its extent along the short side are multiples of ``k``; reducing that strip and pasting
    it gives the same blocks as reducing the canvas."""
    w, h = image.size
    side = max(w, h)
    if w >= h:
        off = (w - h) // 2
        pre = off % k
        post = min((-(pre + h)) % k, side - off - h)  # stop at the canvas edge
        strip = Image.new(image.mode, (w, pre + h + post), background)
        strip.paste(image, (0, pre))
        where = (0, off // k)
    else:
        off = (h - w) // 2
        pre = off % k
        post = min((-(pre + w)) % k, side - off - w)
        strip = Image.new(image.mode, (pre + w + post, h), background)
        strip.paste(image, (pre, 0))
        where = (off // k, 0)
    n = -(-side // k)
    canvas = Image.new(image.mode, (n, n), background)
    canvas.paste(strip.reduce(k), where)
    return canvas, (0.0, 0.0, side / k, side / k)


# ------------------------------------------------------------------------ preprocess
def preprocess(
    image: Image.Image,
    size: int,
    mode: str = "pad",
    *,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    resample: int = Image.BICUBIC,
    exif_transpose: bool = True,
    reduce_above: float | None = 16.0,
) -> np.ndarray:
    """One image -> ``float32[size, size, 3]``, CLIP-normalised, channels last.

    ``mode``: ``'pad'`` (LLaVA-1.5 expand2square, the default), ``'crop'`` (plain
    ``CLIPImageProcessor``), ``'resize'`` (squash). ``mean``/``std`` also set the pad
    colour. See the module docstring for exactness, the large-image reduction and the
    pixel budget (``ImageTooLarge``).
    """
    if not isinstance(image, Image.Image):
        raise TypeError(
            f"preprocess expects a PIL.Image (use load_image for paths/bytes), got {type(image).__name__}"
        )
    if mode not in MODES:
        raise ValueError(f"unknown image mode {mode!r}; expected one of {MODES}")
    size = int(size)
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError("mean and std must have 3 entries (RGB)")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"empty image of size {image.size}")
    check_pixels(image.size, "given to preprocess")

    if exif_transpose:
        image = ImageOps.exif_transpose(image)
    image = to_rgb(image)
    w, h = image.size

    box = None
    if mode == "pad":
        k = _reduction(max(w, h), size, reduce_above)
        if k > 1:
            image, box = _reduced_square(image, k, background_color(mean))
        else:
            image = expand2square(image, background_color(mean))
        side = max(w, h)
        out_h, out_w = _shortest_edge_size(side, side, size)
    elif mode == "crop":
        k = _reduction(min(w, h), size, reduce_above)
        image, box = _reduce(image, k, k)
        out_h, out_w = _shortest_edge_size(h, w, size)
    else:  # resize
        image, box = _reduce(
            image, _reduction(w, size, reduce_above), _reduction(h, size, reduce_above)
        )
        out_h, out_w = size, size

    if box is not None:
        image = image.resize((out_w, out_h), resample=resample, box=box)
    elif image.size != (out_w, out_h):
        image = image.resize((out_w, out_h), resample=resample)
    arr = np.asarray(image, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:  # pragma: no cover - to_rgb guarantees it
        raise ValueError(f"expected an RGB image, got array of shape {arr.shape}")

    top = (out_h - size) // 2
    left = (out_w - size) // 2
    arr = arr[top : top + size, left : left + size]

    x = (arr.astype(np.float64) * _RESCALE).astype(np.float32)
    m = np.asarray(mean, dtype=np.float32)
    s = np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray((x - m) / s, dtype=np.float32)


def preprocess_batch(
    images: Iterable[ImageSource],
    size: int,
    mode: str = "pad",
    **kwargs,
) -> np.ndarray:
    """Several images (PIL images, paths or encoded bytes) -> ``float32[N, size, size, 3]``.

    Keyword arguments go to ``preprocess``. An empty input gives shape ``[0, size, size, 3]``.
    """
    out = [preprocess(load_image(im), size, mode, **kwargs) for im in images]
    if not out:
        return np.zeros((0, int(size), int(size), 3), np.float32)
    return np.stack(out)
