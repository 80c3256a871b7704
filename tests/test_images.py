"""CLIP preprocessing: parity with transformers' CLIPImageProcessor, LLaVA 'pad' mode, modes,
EXIF, loading errors."""
import io
import logging

import numpy as np
import pytest
from PIL import Image

from conftest import bomb_png
from mmalign_jax.data import images as I

transformers = pytest.importorskip("transformers")

TOL = 1e-5


def _quiet():
    logging.getLogger("transformers").setLevel(logging.ERROR)


_PROCS = {}


def clip_processor(size, **kw):
    """The real transformers processor (PIL backend here: torchvision is absent)."""
    _quiet()
    key = (size, tuple(sorted(kw.items())))
    if key not in _PROCS:
        args = dict(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        args.update(kw)
        _PROCS[key] = transformers.CLIPImageProcessor(**args)
    return _PROCS[key]


def hf_pixels(img, size, **kw):
    out = clip_processor(size, **kw)(images=img, return_tensors="np")["pixel_values"][0]
    return out.transpose(1, 2, 0)  # CHW -> HWC


def llava_expand2square(pil_img, background_color):
    """Written out independently from LLaVA-1.5 llava/train/train.py."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    elif width > height:
        result = Image.new(pil_img.mode, (width, width), background_color)
        result.paste(pil_img, (0, (width - height) // 2))
        return result
    else:
        result = Image.new(pil_img.mode, (height, height), background_color)
        result.paste(pil_img, ((height - width) // 2, 0))
        return result


LLAVA_BG = tuple(int(x * 255) for x in (0.48145466, 0.4578275, 0.40821073))


def reference(img, size, mode):
    """LLaVA's data path: Image.open(...).convert('RGB') [-> expand2square] -> processor."""
    rgb = img.convert("RGB")
    # PIL carries a palette's transparency index over as an RGB colour key
    # (info['transparency']), which transformers>=5 would composite onto white; LLaVA's
    # processor of the time did not look at it, and neither do we.
    rgb.info.pop("transparency", None)
    if mode == "pad":
        rgb = llava_expand2square(rgb, LLAVA_BG)
    return hf_pixels(rgb, size)


def _rng_image(w, h, seed=0):
    rng = np.random.default_rng(seed)
    # smooth-ish content plus noise so that resampling matters
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(w, 1)), (yy * 255 // max(h, 1)), ((xx + yy) % 256)], -1)
    noise = rng.integers(0, 64, (h, w, 3))
    return ((base + noise) % 256).astype(np.uint8)


def make_image(kind):
    if kind == "rgb_wide":
        return Image.fromarray(_rng_image(640, 480, 1))
    if kind == "rgb_tall":
        return Image.fromarray(_rng_image(300, 517, 2))
    if kind == "rgba":
        a = _rng_image(400, 250, 3)
        alpha = np.zeros((250, 400), np.uint8)
        alpha[:, 200:] = 255
        alpha[:100, :] = 128
        return Image.fromarray(np.dstack([a, alpha]), "RGBA")
    if kind == "gray":
        return Image.fromarray(_rng_image(350, 200, 4)[..., 0], "L")
    if kind == "palette":
        im = Image.fromarray(_rng_image(260, 390, 5)).quantize(64)
        im.info["transparency"] = 3
        return im
    if kind == "1x1":
        return Image.new("RGB", (1, 1), (200, 10, 30))
    if kind == "3000x200":
        return Image.fromarray(_rng_image(3000, 200, 6))
    raise KeyError(kind)


KINDS = ["rgb_wide", "rgb_tall", "rgba", "gray", "palette", "1x1", "3000x200"]


def test_clip_image_processor_backend_is_pil():
    """Document which implementation CLIPImageProcessor is here (we match it)."""
    proc = clip_processor(224)
    assert type(proc).__name__ in ("CLIPImageProcessorPil", "CLIPImageProcessor")
    assert getattr(proc, "backend", "pil") == "pil"
    assert int(proc.resample) == int(Image.BICUBIC)
    np.testing.assert_allclose(proc.image_mean, I.CLIP_MEAN)
    np.testing.assert_allclose(proc.image_std, I.CLIP_STD)


@pytest.mark.parametrize("size", [224, 336])
@pytest.mark.parametrize("mode", ["pad", "crop"])
@pytest.mark.parametrize("kind", KINDS)
def test_parity_with_clip_image_processor(kind, mode, size):
    img = make_image(kind)
    ours = I.preprocess(img, size, mode)
    assert ours.shape == (size, size, 3) and ours.dtype == np.float32
    assert ours.flags.c_contiguous
    ref = reference(img, size, mode)
    assert np.abs(ours - ref).max() <= TOL


def test_pad_background_matches_llava():
    assert I.background_color() == (122, 116, 104) == LLAVA_BG
    img = Image.new("RGB", (100, 20), (255, 0, 0))
    out = I.preprocess(img, 224, "pad")
    corner = out[0, 0]
    expected = (np.array(LLAVA_BG) / 255.0 - np.array(I.CLIP_MEAN)) / np.array(I.CLIP_STD)
    np.testing.assert_allclose(corner, expected, atol=1e-5)
    # centered vertically: the red band sits in the middle rows
    mid = out[112, 112]
    red = (np.array([1.0, 0, 0]) - np.array(I.CLIP_MEAN)) / np.array(I.CLIP_STD)
    np.testing.assert_allclose(mid, red, atol=1e-5)


def test_rgba_drops_alpha_like_llava_not_white_composite():
    img = make_image("rgba")
    ours = I.preprocess(img, 224, "crop")
    # LLaVA: .convert('RGB') (alpha dropped) -> identical
    assert np.abs(ours - hf_pixels(img.convert("RGB"), 224)).max() <= TOL
    # transformers on the raw RGBA composites transparent pixels onto white -> differs
    assert np.abs(ours - hf_pixels(img, 224)).max() > 0.1


@pytest.mark.parametrize("size", [224, 336])
def test_resize_mode_matches_processor_without_crop(size):
    img = make_image("rgb_tall")
    _quiet()
    proc = transformers.CLIPImageProcessor(size={"height": size, "width": size}, do_center_crop=False)
    ref = proc(images=img, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    ours = I.preprocess(img, size, "resize")
    assert np.abs(ours - ref).max() <= TOL


def test_custom_mean_std_and_resample():
    img = make_image("rgb_wide")
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    _quiet()
    proc = transformers.CLIPImageProcessor(
        size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64},
        image_mean=mean, image_std=std, resample=Image.BILINEAR)
    ref = proc(images=img, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    ours = I.preprocess(img, 64, "crop", mean=mean, std=std, resample=Image.BILINEAR)
    assert np.abs(ours - ref).max() <= TOL
    # pad colour follows the mean
    assert I.background_color(mean) == (127, 127, 127)


def _exif_png(arr, orientation):
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="PNG", exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("orientation,transpose", [
    (6, Image.Transpose.ROTATE_270), (8, Image.Transpose.ROTATE_90), (3, Image.Transpose.ROTATE_180),
    (2, Image.Transpose.FLIP_LEFT_RIGHT)])
def test_exif_orientation_applied(orientation, transpose):
    arr = _rng_image(120, 60, 7)
    loaded = I.load_image(_exif_png(arr, orientation), name="exif.png")
    assert loaded.getexif().get(0x0112) == orientation
    upright = Image.fromarray(arr).transpose(transpose)
    ours = I.preprocess(loaded, 64, "pad")
    np.testing.assert_array_equal(ours, I.preprocess(upright, 64, "pad"))
    raw = I.preprocess(loaded, 64, "pad", exif_transpose=False)
    np.testing.assert_array_equal(raw, I.preprocess(Image.fromarray(arr), 64, "pad"))
    assert not np.array_equal(raw, ours)


def test_other_modes():
    base = _rng_image(90, 70, 8)
    # LA: alpha dropped -> grayscale
    la = Image.fromarray(np.dstack([base[..., 0], base[..., 1]]), "LA")
    np.testing.assert_array_equal(I.preprocess(la, 32, "crop"),
                                  I.preprocess(Image.fromarray(base[..., 0], "L"), 32, "crop"))
    # CMYK: PIL's conversion, as LLaVA's .convert('RGB')
    cmyk = Image.fromarray(base).convert("CMYK")
    np.testing.assert_array_equal(I.preprocess(cmyk, 32, "crop"),
                                  I.preprocess(cmyk.convert("RGB"), 32, "crop"))
    # 1-bit
    bw = Image.fromarray(base[..., 0] > 128)
    assert I.preprocess(bw, 32, "pad").shape == (32, 32, 3)
    # palette without transparency
    p = Image.fromarray(base).quantize(16)
    assert np.abs(I.preprocess(p, 32, "crop") - hf_pixels(p.convert("RGB"), 32)).max() <= TOL


def test_16bit_images_are_scaled_not_saturated():
    g16 = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    im16 = Image.fromarray(g16)
    assert im16.mode.startswith("I;16")
    g8 = np.rint(g16 / 257.0).astype(np.uint8)
    expected = I.preprocess(Image.fromarray(g8, "L"), 32, "pad")
    np.testing.assert_array_equal(I.preprocess(im16, 32, "pad"), expected)
    # 32-bit 'I' holding 16-bit data, and float 'F' in [0, 1]
    np.testing.assert_array_equal(I.preprocess(Image.fromarray(g16.astype(np.int32)), 32, "pad"), expected)
    f = Image.fromarray((g8 / 255.0).astype(np.float32))
    np.testing.assert_array_equal(I.preprocess(f, 32, "pad"), expected)


def _smooth_image(w, h, seed):
    """Photo-like content (smooth structure + mild noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    a = np.stack([127 + 100 * np.sin(xx / 37.0), 127 + 100 * np.cos(yy / 23.0),
                  127 + 60 * np.sin((xx + yy) / 51.0)], -1) + rng.normal(0, 8, (h, w, 3))
    return np.clip(a, 0, 255).astype(np.uint8)


def test_huge_images_are_reduced_first_and_stay_close():
    # The threshold scales with `size` (16 x size), so a small size keeps this test cheap.
    size, level = 32, 1 / 255 / min(I.CLIP_STD)  # one uint8 level after normalisation
    cases = [((1200, 30), "pad"), ((30, 1201), "pad"), ((1100, 1000), "pad"),
             ((1100, 1000), "crop"), ((1100, 1000), "resize")]
    for (w, h), mode in cases:
        img = Image.fromarray(_smooth_image(w, h, w + h))
        exact = I.preprocess(img, size, mode, reduce_above=None)
        if mode != "resize":
            assert np.abs(exact - reference(img, size, mode)).max() <= TOL
        fast = I.preprocess(img, size, mode)
        assert fast.shape == exact.shape
        d = np.abs(fast - exact)
        assert d.max() <= 4 * level, ((w, h), mode)
        assert d.mean() <= 0.5 * level, ((w, h), mode)
    # at or below the threshold nothing changes
    ok = Image.fromarray(_rng_image(16 * size, 100, 11))
    np.testing.assert_array_equal(I.preprocess(ok, size, "pad"),
                                  I.preprocess(ok, size, "pad", reduce_above=None))


def test_load_image_paths_bytes_and_errors(tmp_path):
    arr = _rng_image(30, 20, 11)
    path = tmp_path / "ok.png"
    Image.fromarray(arr).save(path)
    im = I.load_image(path)
    np.testing.assert_array_equal(np.asarray(im), arr)
    np.testing.assert_array_equal(np.asarray(I.load_image(str(path))), arr)
    np.testing.assert_array_equal(np.asarray(I.load_image(path.read_bytes())), arr)
    assert I.load_image(im) is im

    missing = tmp_path / "nope" / "missing.jpg"
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        I.load_image(missing)
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(I.ImageLoadError, match="corrupt.jpg"):
        I.load_image(bad)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(path.read_bytes()[:60])
    with pytest.raises(I.ImageLoadError, match="truncated.png"):
        I.load_image(truncated)
    with pytest.raises(I.ImageLoadError, match="rec-7"):
        I.load_image(b"garbage", name="rec-7")
    with pytest.raises(I.ImageLoadError, match="empty"):
        I.load_image(b"")
    with pytest.raises(TypeError):
        I.load_image(123)


def test_preprocess_batch_and_argument_errors(tmp_path):
    a, b = Image.fromarray(_rng_image(50, 40, 12)), Image.fromarray(_rng_image(40, 50, 13))
    pb = tmp_path / "b.png"
    b.save(pb)
    buf = io.BytesIO()
    a.save(buf, format="PNG")
    out = I.preprocess_batch([a, pb, buf.getvalue()], 32, "crop")
    assert out.shape == (3, 32, 32, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], I.preprocess(a, 32, "crop"))
    np.testing.assert_array_equal(out[1], I.preprocess(b, 32, "crop"))
    np.testing.assert_array_equal(out[2], out[0])
    assert I.preprocess_batch([], 32).shape == (0, 32, 32, 3)
    with pytest.raises(ValueError, match="mode"):
        I.preprocess(a, 32, "squash")
    with pytest.raises(ValueError):
        I.preprocess(a, 0)
    with pytest.raises(TypeError):
        I.preprocess(np.zeros((4, 4, 3), np.uint8), 32)


def test_reduced_pad_canvas_equals_reducing_the_full_canvas():
    """The large-image 'pad' path never builds the full canvas but gets the same blocks."""
    rng = np.random.default_rng(14)
    bg = I.background_color()
    for w, h, k in [(100, 31, 3), (31, 100, 3), (101, 37, 4), (103, 102, 4), (102, 103, 4),
                    (50, 49, 7), (200, 3, 9), (97, 96, 2), (3, 200, 9)]:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        fast, box = I._reduced_square(img, k, bg)
        np.testing.assert_array_equal(np.asarray(fast), np.asarray(I.expand2square(img, bg).reduce(k)))
        assert box == (0.0, 0.0, max(w, h) / k, max(w, h) / k)


# --------------------------------------------------------- pixel budget (issue 25, case 8)

@pytest.fixture
def no_decoding(monkeypatch):
    """Any pixel decoding fails the test: what is refused must be refused from the header."""
    from PIL import ImageFile

    def load(self):
        raise AssertionError(f"decoded a {self.size} image")
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def test_an_image_over_the_pixel_budget_is_refused_before_decoding(tmp_path, no_decoding):
    """A 17 KB PNG that decodes to 12000x12000 was accepted with only PIL's warning and took
    1.3 GB to preprocess; now load_image (LLaVA's path) and both families' preprocessing
    refuse it from its header, naming it, the size and the budget."""
    data = bomb_png()
    assert len(data) < 30_000
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    want = (f"image {path} is 12000x12000 = 144.0 MP, over the budget of 100 MP per image "
            "(decoding it alone would take 0.40 GiB as RGB); downscale it, or raise the budget "
            "with MMALIGN_JAX_MAX_IMAGE_PIXELS=N pixels (0: none)")
    with pytest.raises(I.ImageTooLarge) as e:
        I.load_image(path)
    assert str(e.value) == want and isinstance(e.value, I.ImageLoadError)
    with pytest.raises(I.ImageTooLarge, match=r"^image rec-3 is 12000x12000"):
        I.load_image(data, name="rec-3")
    lazy = I.open_checked(path, "x", max_pixels=0)   # opened, nothing decoded, no budget
    with pytest.raises(I.ImageTooLarge, match="given to preprocess is 12000x12000"):
        I.preprocess(lazy, 336)
    from mmalign_jax.models.qwen2_5_vl import processor
    with pytest.raises(I.ImageTooLarge, match="given to preprocess is 12000x12000"):
        processor.preprocess(lazy)
    from mmalign_jax.generate.candidates import image_size
    with pytest.raises(ValueError, match="bomb.png is 12000x12000"):
        image_size(str(path))                     # Qwen prompts: the record is skipped


def test_the_pixel_budget_is_configurable(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    Image.fromarray(_rng_image(40, 30, 3)).save(path)
    assert I.max_image_pixels() == I.DEFAULT_MAX_PIXELS == 100_000_000
    monkeypatch.setenv(I.MAX_PIXELS_ENV, "1000")
    with pytest.raises(I.ImageTooLarge, match=r"is 40x30 = 0.0 MP, over the budget of 0.001 MP"):
        I.load_image(path)
    monkeypatch.setenv(I.MAX_PIXELS_ENV, "1200")
    assert I.load_image(path).size == (40, 30)                  # at the budget: fine
    monkeypatch.setenv(I.MAX_PIXELS_ENV, "0")                   # no budget
    assert I.pixel_budget_problem((10**5, 10**5)) is None
    monkeypatch.setenv(I.MAX_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match="MMALIGN_JAX_MAX_IMAGE_PIXELS='lots'"):
        I.max_image_pixels()
