"""Qwen2.5-VL image preprocessing against transformers' Qwen2VLImageProcessorPil (the class
``Qwen2VLImageProcessor`` resolves to without torchvision): pixels, grids, sizing errors,
config parsing, padding and buckets. Random pixel content; no downloads."""
import warnings

import numpy as np
import pytest
from PIL import Image

transformers = pytest.importorskip("transformers")
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (  # noqa: E402
    Qwen2VLImageProcessorPil,
    smart_resize as hf_smart_resize,
)

from mmalign_jax.models.qwen2_5_vl import processor as P  # noqa: E402


def _image(width, height, mode, seed):
    rng = np.random.default_rng(seed)
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), "L")
    if mode == "RGBA":
        return Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA")
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    if mode == "P":  # palette with a transparent index: composited onto white like RGBA
        pal = rgb.convert("P")
        pal.info["transparency"] = 3
        return pal
    return rgb


def _hf(pcfg):
    return Qwen2VLImageProcessorPil(
        min_pixels=pcfg.min_pixels, max_pixels=pcfg.max_pixels, patch_size=pcfg.patch_size,
        temporal_patch_size=pcfg.temporal_patch_size, merge_size=pcfg.merge_size)


CASES = [
    # (width, height, mode, max_pixels)
    pytest.param(30, 40, "RGB", None, id="small-upscaled-to-min_pixels"),
    pytest.param(5, 7, "RGB", None, id="tiny-sides-upscaled"),
    pytest.param(1500, 1100, "RGB", 256 * 28 * 28, id="large-downscaled"),
    pytest.param(1000, 40, "RGB", None, id="extreme-aspect"),
    pytest.param(333, 517, "RGB", None, id="odd-size"),
    pytest.param(333, 517, "RGBA", None, id="rgba"),
    pytest.param(517, 333, "L", None, id="grayscale"),
    pytest.param(64, 900, "P", None, id="palette-transparency"),
]


@pytest.mark.parametrize("width,height,mode,max_pixels", CASES)
def test_matches_hf_processor(width, height, mode, max_pixels):
    pcfg = P.ProcessorConfig() if max_pixels is None else P.ProcessorConfig(max_pixels=max_pixels)
    img = _image(width, height, mode, seed=width * 7 + height)
    ref = _hf(pcfg)(img, return_tensors="np")
    patches, grid = P.preprocess(img, pcfg)

    assert patches.dtype == np.float32 and grid.dtype == np.int32
    np.testing.assert_array_equal(grid, ref["image_grid_thw"][0])
    assert patches.shape == ref["pixel_values"].shape == (int(np.prod(grid)), pcfg.patch_dim)
    np.testing.assert_allclose(patches, ref["pixel_values"], rtol=0, atol=1e-6)
    # the header-only paths agree with the decoded image
    assert P.grid_for_size(width, height, pcfg) == tuple(int(g) for g in grid)
    assert P.num_image_tokens(width, height, pcfg) == int(np.prod(grid)) // pcfg.merge_size ** 2
    assert int(np.prod(grid)) == _hf(pcfg).get_number_of_image_patches(height, width)
    if mode == "RGB" and max_pixels is None and width * height < pcfg.min_pixels:
        assert grid[1] * grid[2] * pcfg.patch_size ** 2 >= pcfg.min_pixels


def test_patch_layout():
    """Row r is patch (h, w) in merge-block order; its values are (C, T, 14, 14) with both
    temporal copies equal -- checked on the normalized image itself."""
    pcfg = P.ProcessorConfig()
    img = _image(112, 84, "RGB", seed=3)   # already a multiple of 28: the resize is a copy
    patches, grid = P.preprocess(img, pcfg)
    _, gh, gw = (int(g) for g in grid)
    x = np.asarray(img).astype(np.float64) * (1 / 255)
    x = ((x.astype(np.float32) - np.float32(P.OPENAI_CLIP_MEAN)) / np.float32(P.OPENAI_CLIP_STD))
    rows = patches.reshape(gh // 2, gw // 2, 2, 2, 3, 2, 14, 14)
    for bh in range(gh // 2):
        for bw in range(gw // 2):
            for mh in range(2):
                for mw in range(2):
                    h, w = bh * 2 + mh, bw * 2 + mw
                    want = x[h * 14:(h + 1) * 14, w * 14:(w + 1) * 14].transpose(2, 0, 1)
                    got = rows[bh, bw, mh, mw]
                    np.testing.assert_array_equal(got[:, 0], want)
                    np.testing.assert_array_equal(got[:, 1], want)


@pytest.mark.parametrize("height,width", [(40, 30), (1100, 1500), (40, 1000), (517, 333), (7, 5),
                                          (28, 28), (14, 2800), (2800, 14), (10000, 9999), (56, 56)])
@pytest.mark.parametrize("bounds", [(3136, 12845056), (3136, 256 * 28 * 28), (256 * 28 * 28, 1280 * 28 * 28)])
def test_smart_resize_matches_hf(height, width, bounds):
    lo, hi = bounds
    assert P.smart_resize(height, width, 28, lo, hi) == hf_smart_resize(height, width, 28, lo, hi)


def test_smart_resize_errors():
    with pytest.raises(ValueError, match=r"4020x20 .*aspect ratio must be at most 200, got 201\.0"):
        P.smart_resize(20, 4020)
    with pytest.raises(ValueError):   # HF refuses it too
        hf_smart_resize(20, 4020)
    assert P.smart_resize(20, 4000) == hf_smart_resize(20, 4000)   # exactly 200 is allowed
    with pytest.raises(ValueError, match=r"image size 0x10"):
        P.smart_resize(10, 0)
    with pytest.raises(ValueError, match=r"image size 5x-3"):
        P.smart_resize(-3, 5)
    with pytest.raises(ValueError, match=r"image size 10x10 .* resizes to 0x0"):
        P.smart_resize(10, 10, 28, 0, 28 * 28 * 1280)
    with pytest.raises(ValueError, match=r"image size 4020x20"):
        P.grid_for_size(4020, 20, P.ProcessorConfig())
    with pytest.raises(ValueError, match=r"aspect ratio"):
        P.preprocess(_image(4020, 20, "RGB", 0), P.ProcessorConfig())


def test_config_from_hf():
    # Qwen2.5-VL-*-Instruct preprocessor_config.json
    qwen25 = {
        "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
        "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
    }
    assert P.ProcessorConfig.from_hf(qwen25) == P.ProcessorConfig()
    newer = {"size": {"shortest_edge": 100 * 28 * 28, "longest_edge": 400 * 28 * 28}, "merge_size": 2,
             "patch_size": 14, "temporal_patch_size": 2, "do_resize": True, "resample": 3,
             "rescale_factor": 0.00392156862745098}
    both = dict(newer, min_pixels=50 * 28 * 28)   # top-level keys win, as in HF's __init__
    for d in (qwen25, newer, both):
        pcfg = P.ProcessorConfig.from_hf(d)
        hf = Qwen2VLImageProcessorPil(
            **{k: v for k, v in d.items() if k not in ("image_processor_type", "processor_class")})
        assert (pcfg.min_pixels, pcfg.max_pixels) == (hf.size.shortest_edge, hf.size.longest_edge)
        assert (pcfg.patch_size, pcfg.temporal_patch_size, pcfg.merge_size) == (
            hf.patch_size, hf.temporal_patch_size, hf.merge_size)
        assert pcfg.rescale_factor == hf.rescale_factor and pcfg.resample == int(hf.resample)
        img = _image(700, 450, "RGB", seed=11)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = hf(img, return_tensors="np")
        patches, grid = P.preprocess(img, pcfg)
        np.testing.assert_array_equal(grid, ref["image_grid_thw"][0])
        np.testing.assert_allclose(patches, ref["pixel_values"], rtol=0, atol=1e-6)
    assert P.ProcessorConfig.from_hf(both).min_pixels == 50 * 28 * 28
    with pytest.raises(ValueError, match="do_resize"):
        P.ProcessorConfig.from_hf({"do_resize": False})
    with pytest.raises(ValueError, match="min_pixels .* > max_pixels"):
        P.ProcessorConfig.from_hf({"min_pixels": 10_000, "max_pixels": 5_000})
    with pytest.raises(ValueError, match="image_mean needs 3"):
        P.ProcessorConfig(image_mean=(0.5, 0.5))


def test_pad_patches():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = P.pad_patches(x, 5)
    assert out.shape == (5, 4) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:3], x)
    assert not out[3:].any()
    np.testing.assert_array_equal(P.pad_patches(x, 3), x)
    with pytest.raises(ValueError, match="cannot pad 3 patches to 2"):
        P.pad_patches(x, 2)
    with pytest.raises(ValueError, match=r"\[n_patches, D\]"):
        P.pad_patches(np.zeros(4), 5)


def test_buckets():
    pcfg = P.ProcessorConfig()
    assert P.default_buckets(pcfg, 1024) == [64, 128, 256, 512, 1024]
    assert P.default_buckets(pcfg, 1000) == [64, 128, 256, 512, 1000]
    assert P.default_buckets(pcfg, 40) == [40]
    assert P.default_buckets(P.ProcessorConfig(merge_size=3), 900) == [144, 288, 576, 900]
    for bad in (0, 2, 1002):
        with pytest.raises(ValueError, match="multiple of merge_size"):
            P.default_buckets(pcfg, bad)
    b = P.default_buckets(pcfg, 1000)
    assert P.patch_bucket(1, b) == 64
    assert P.patch_bucket(64, b) == 64
    assert P.patch_bucket(65, b) == 128
    assert P.patch_bucket(1000, b) == 1000
    assert P.patch_bucket(100, [512, 128, 256]) == 128   # order does not matter
    with pytest.raises(ValueError, match=r"image 1500x1100 \(width x height\) needs 1001 patches, more than "
                                         r"the largest bucket \(1000\)"):
        P.patch_bucket(1001, b, image_size=(1500, 1100))
    with pytest.raises(ValueError, match=r"needs 1001 patches"):
        P.patch_bucket(1001, b)
    # every image of a mixed set lands in a bucket; padding keeps its rows
    pcfg_small = P.ProcessorConfig(max_pixels=256 * 28 * 28)
    buckets = P.default_buckets(pcfg_small, 1024)
    for (w, h) in [(30, 40), (1500, 1100), (1000, 40), (333, 517)]:
        patches, grid = P.preprocess(_image(w, h, "RGB", seed=w), pcfg_small)
        n = P.patch_bucket(len(patches), buckets, image_size=(w, h))
        padded = P.pad_patches(patches, n)
        assert n in buckets and padded.shape == (n, pcfg_small.patch_dim)
        np.testing.assert_array_equal(padded[: len(patches)], patches)
