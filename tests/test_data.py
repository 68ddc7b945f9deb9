"""Training data sources: landscapes, scikit-image photos, user folders, the resumable dataset."""
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from chain_dataset import PatchChainDataset, collate
from nuwa_fast.data import (FolderSource, MixtureSource, make_source, render_landscape, render_landscape_video,
                            sample_skimage, skimage_images)
from nuwa_fast.data.folder import IMAGE_EXTS

ODD_SIZES = [(24, 40), (33, 57), (256, 72), (7, 5)]
SKY_WORD = {"day": "day", "sunset": "sunset", "night": "night"}
GROUND_WORD = {"grass": "grass", "desert": "desert", "forest": "forest"}


def _mad(a, b):
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


@pytest.mark.parametrize("height,width", ODD_SIZES)
def test_landscape_shape_dtype_determinism(height, width):
    img, caption, attrs = render_landscape(3, height, width)
    assert img.shape == (height, width, 3) and img.dtype == np.uint8
    again, caption2, _ = render_landscape(3, height, width)
    assert np.array_equal(img, again) and caption == caption2
    assert not np.array_equal(img, render_landscape(4, height, width)[0])
    forced, _, _ = render_landscape(99, height, width, attrs=attrs)      # attrs reproduce the world
    assert np.array_equal(forced, img)


def test_landscape_captions_name_the_attributes():
    seen = set()
    for seed in range(40):
        _, caption, a = render_landscape(seed, 8, 12)
        print(seed, caption)
        assert SKY_WORD[a["sky"]] in caption and GROUND_WORD[a["ground"]] in caption, caption
        assert ("lake" in caption) == (a["water"] == "lake") or len(caption) > 50
        assert len(caption) <= 62                                         # fits the text encoder
        seen.add((a["sky"], a["ground"]))
    assert len(seen) >= 7, seen                                           # the seeds cover the grid
    _, caption, a = render_landscape(0, 8, 12, {"sky": "night", "ground": "desert", "water": "none"})
    assert a["sky"] == "night" and "night" in caption and "desert" in caption


def test_night_is_darker_than_day_in_the_sky():
    def top_mean(sky):
        vals = []
        for seed in range(5):
            img, _, _ = render_landscape(seed, 60, 90, {"sky": sky})
            vals.append(img[: max(1, img.shape[0] // 10)].mean())
        return np.mean(vals)
    day, night, sunset = top_mean("day"), top_mean("night"), top_mean("sunset")
    print(f"top 10% rows: day {day:.1f} sunset {sunset:.1f} night {night:.1f}")
    assert night < 0.5 * day and night < sunset


def test_panorama_is_a_longer_world_not_a_stretched_one():
    wide, _, attrs = render_landscape(5, 40, 400)
    narrow, _, _ = render_landscape(5, 40, 100, attrs=attrs)
    err = np.abs(wide[:, :80].astype(int) - narrow[:, :80]).max()
    print("max prefix difference", err)
    assert err <= 1


@pytest.mark.parametrize("motion", ["pan", "clouds", "sunset"])
def test_landscape_video_moves_coherently(motion):
    video, caption, attrs = render_landscape_video(2, 6, 33, 57, {"motion": motion})
    assert video.shape == (6, 33, 57, 3) and video.dtype == np.uint8 and attrs["motion"] == motion
    assert {"pan": "pans right", "clouds": "drift", "sunset": "sun sets"}[motion] in caption
    adjacent = np.mean([_mad(video[t], video[t + 1]) for t in range(5)])
    other = render_landscape_video(7, 6, 33, 57, {"motion": motion})[0]
    unrelated = np.mean([_mad(video[t], other[t]) for t in range(6)])
    print(f"{motion}: adjacent {adjacent:.2f} unrelated {unrelated:.2f} ends {_mad(video[0], video[-1]):.2f}")
    assert _mad(video[0], video[-1]) > 0.2
    assert adjacent < 0.5 * unrelated
    assert np.array_equal(video, render_landscape_video(2, 6, 33, 57, {"motion": motion})[0])


def test_pan_slides_the_same_world():
    video, _, attrs = render_landscape_video(1, 4, 30, 50, {"motion": "pan"})
    step = max(1, round(attrs["speed"] * 30))
    assert np.array_equal(video[1][:, : 50 - step], video[0][:, step:])


def test_skimage_images_are_rgb_and_captioned():
    items = skimage_images()
    assert len(items) >= 8
    for img, caption in items:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and caption
    captions = {c for _, c in items}
    assert "a photo of a cat" in captions and "brick texture" in captions


@pytest.mark.parametrize("height,width", ODD_SIZES)
def test_sample_skimage_sizes(height, width):
    img, caption = sample_skimage(np.random.default_rng(height), height, width)
    assert img.shape == (height, width, 3) and img.dtype == np.uint8 and caption
    a, _ = sample_skimage(np.random.default_rng(1), height, width)
    b, _ = sample_skimage(np.random.default_rng(1), height, width)
    assert np.array_equal(a, b)
    clip, caption = sample_skimage(np.random.default_rng(2), height, width, frames=3)
    assert clip.shape == (3, height, width, 3) and "the camera" in caption


@pytest.fixture
def user_folder(tmp_path):
    rng = np.random.default_rng(0)
    rgb = (rng.random((30, 40, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")                         # L
    rgba = np.concatenate([rgb, np.full((30, 40, 1), 128, np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")                        # RGBA
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "pal.bmp")  # P
    Image.fromarray(np.full((30, 40), 65535, np.uint16)).save(tmp_path / "deep.png")  # I;16
    Image.fromarray(rgb).save(tmp_path / "photo.jpg")
    (tmp_path / "photo.txt").write_text("a photo of noise\n")
    frames = [Image.fromarray(np.roll(rgb, 4 * t, axis=1)) for t in range(5)]
    frames[0].save(tmp_path / "clip.gif", save_all=True, append_images=frames[1:], duration=80)
    (tmp_path / "walk").mkdir()
    for t in (1, 2, 10):                                                              # natural order
        Image.fromarray(np.full((20, 20, 3), t * 20, np.uint8)).save(tmp_path / "walk" / f"f{t}.png")
    (tmp_path / "captions.json").write_text(json.dumps({"clip.gif": "a moving pattern",
                                                         "photo.jpg": "loses to the .txt"}))
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    (tmp_path / "notes.md").write_text("ignored")
    return tmp_path


def test_folder_source_modes_captions_and_skips(user_folder):
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        src = FolderSource(user_folder)
    assert len(src.skipped) == 1 and src.skipped[0][0].name == "broken.png"
    by_name = {it.path.name: it for it in src.items}
    assert set(by_name) == {"gray.png", "alpha.png", "pal.bmp", "deep.png", "photo.jpg", "clip.gif",
                            "walk"}
    assert by_name["photo.jpg"].caption == "a photo of noise"
    assert by_name["clip.gif"].caption == "a moving pattern" and by_name["clip.gif"].kind == "video"
    assert by_name["walk"].kind == "frames"
    assert [f.name for f in by_name["walk"].frames] == ["f1.png", "f2.png", "f10.png"]
    for name, item in by_name.items():
        frame = src._frames(item, [0])[0]
        assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3, name
    assert src._frames(by_name["deep.png"], [0])[0].min() == 255                     # 16-bit white stays white
    gray = src._frames(by_name["gray.png"], [0])[0]
    assert np.array_equal(gray[..., 0], gray[..., 2])
    rng = np.random.default_rng(0)
    for _ in range(6):
        clip, caption = src.sample(rng, 24, 40, frames=3)
        assert clip.shape == (3, 24, 40, 3) and clip.dtype == np.uint8
        still, _ = src.sample(rng, 33, 57)
        assert still.shape == (1, 33, 57, 3)


def test_folder_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FolderSource(tmp_path / "missing")
    with pytest.raises(ValueError) as err:
        FolderSource(tmp_path)
    assert str(tmp_path) in str(err.value) and all(ext in str(err.value) for ext in IMAGE_EXTS)
    with pytest.raises(ValueError, match="folder:"):
        make_source("folder:")


def test_make_source_specs(user_folder):
    assert make_source("landscape").name == "landscape"
    assert make_source("skimage").name == "skimage"
    mix = make_source("landscape:0.8,skimage:0.2")
    assert isinstance(mix, MixtureSource) and np.allclose(mix.weights, [0.8, 0.2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mix = make_source(f"landscape:3,folder:{user_folder}:1")
    assert np.allclose(mix.weights, [0.75, 0.25]) and mix.sources[1].root == user_folder
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    for spec in ["landscape", "skimage"]:                                             # held-out seeds differ
        a, b = make_source(spec, 0).sample(rng(), 16, 16), make_source(spec, 1).sample(rng(), 16, 16)
        assert a[0].shape == (1, 16, 16, 3) and not np.array_equal(a[0], b[0])
    for bad in ["", "lanscape", "landscape:x", "landscape:0,skimage:1"]:
        with pytest.raises(ValueError):
            make_source(bad)


@pytest.mark.parametrize("spec,frames", [("landscape", 1), ("skimage", 2), ("landscape:0.5,skimage:0.5", 3)])
def test_dataset_samples(spec, frames):
    ds = PatchChainDataset(spec, 24, 40, frames=frames, seed=3)
    batch = collate([s for s, _ in zip(ds, range(3))])
    pixels = batch["pixels"]
    assert pixels.shape == (3, frames, 3, 24, 40) and pixels.dtype == torch.float32
    assert pixels.min() >= -1 and pixels.max() <= 1 and len(batch["caption"]) == 3
    assert torch.equal(ds.sample(1)["pixels"], pixels[1])                            # a pure function of i
    other_rank = PatchChainDataset(spec, 24, 40, frames=frames, seed=3, rank=1, world_size=2)
    assert not torch.equal(other_rank.sample(1)["pixels"], pixels[1])


def test_dataset_resume_continues_the_stream():
    make = lambda: PatchChainDataset("landscape:0.7,skimage:0.3", 33, 57, seed=11)  # noqa: E731
    full = [s for s, _ in zip(make(), range(7))]
    first = make()
    it = iter(first)
    for _ in range(4):
        next(it)
    state = first.state_dict()
    assert state["consumed"] == 4
    resumed = make()
    resumed.load_state_dict(state)
    rest = [s for s, _ in zip(resumed, range(3))]
    for a, b in zip(full[4:], rest):
        assert torch.equal(a["pixels"], b["pixels"]) and a["caption"] == b["caption"]
    with pytest.raises(ValueError, match="seed"):
        PatchChainDataset("landscape", 8, 8, seed=12).load_state_dict(state)


def test_dataloader_workers_keep_the_sample_order():
    ds = PatchChainDataset("landscape", 16, 24, seed=5, batch_size=2)
    ds.load_state_dict({"consumed": 2})
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate)
    got = [b for b, _ in zip(loader, range(3))]
    for k, batch in enumerate(got):
        for j in range(2):
            assert torch.equal(batch["pixels"][j], ds.sample(2 + 2 * k + j)["pixels"])
