"""Frozen-feature cache and the torchvision-free image preprocessing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from qure.models import MiniBlip2Backbone, PatchEncoderConfig, QFormerConfig, WordTokenizer
from qure.models.feature_cache import (
    FeatureCache,
    FeatureCacheMismatchError,
    build_feature_cache,
    image_loader,
    index_path,
)
from qure.models.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    build_transform,
    center_crop,
    load_image,
    resize_shorter,
    simple_transform,
    target_pad,
    target_pad_sizes,
    targetpad_transform,
    to_tensor_normalised,
)

ENCODER = PatchEncoderConfig(image_size=16, patch_size=4, width=32, depth=1, heads=2)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def backbone(seed: int = 0) -> MiniBlip2Backbone:
    torch.manual_seed(seed)
    return MiniBlip2Backbone(WordTokenizer.from_corpus(["make it blue"]), image_encoder=ENCODER,
                             qformer=QFormerConfig(num_query_tokens=2, width=32, depth=1,
                                                   heads=2)).eval()


def fake_images(names: list[str]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {name: torch.randn(3, 16, 16, generator=g) for name in names}


PREPROCESS = simple_transform(16).config


# --- feature cache -------------------------------------------------------------------------

def test_cache_round_trip(tmp_path):
    names = [f"img{i:02d}" for i in range(10)]
    images = fake_images(names)
    model = backbone()
    path = tmp_path / "cache" / "train.npy"
    cache = build_feature_cache(path, names, images.__getitem__, model, PREPROCESS,
                                batch_size=4, progress=False)
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.index.json", "train.npy"]
    assert cache.names == names and cache.shape == (10, 16, 32) and len(cache) == 10
    expected = model.frozen_features(torch.stack([images[n] for n in names]))
    got = cache[names]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected.half().float())
    torch.testing.assert_close(cache[["img07", "img02"]], got[[7, 2]])
    torch.testing.assert_close(cache["img03"], got[3])
    torch.testing.assert_close(cache.take(torch.tensor([9, 0])), got[[9, 0]])
    assert np.load(path, mmap_mode="r").dtype == np.float16
    index = json.loads(index_path(path).read_text())
    assert index["shape"] == [10, 16, 32] and index["dtype"] == "float16"
    assert index["fingerprint"] == model.frozen_fingerprint(PREPROCESS)
    reopened = FeatureCache.open_for(path, backbone(), PREPROCESS)  # same seed, same weights
    assert reopened.index == cache.index
    with pytest.raises(KeyError, match="img99"):
        cache[["img99"]]


def test_fingerprint_mismatch_names_the_file(tmp_path):
    names = ["a", "b", "c"]
    path = tmp_path / "gallery.npy"
    model = backbone()
    build_feature_cache(path, names, fake_images(names).__getitem__, model, PREPROCESS,
                        progress=False)
    with pytest.raises(FeatureCacheMismatchError, match=r"gallery\.npy"):
        FeatureCache.open_for(path, backbone(seed=1), PREPROCESS)
    with pytest.raises(FeatureCacheMismatchError, match=r"gallery\.npy"):
        FeatureCache.open_for(path, model, targetpad_transform(1.25, 16).config)
    # A trainable-part change (not the frozen encoder) keeps the cache valid.
    with torch.no_grad():
        model.vision_proj.weight.add_(1.0)
    FeatureCache.open_for(path, model, PREPROCESS)


def test_failed_build_leaves_no_files(tmp_path):
    images = fake_images(["a", "b", "c", "d"])

    def load(name: str) -> torch.Tensor:
        if name == "d":
            raise FileNotFoundError(name)
        return images[name]

    with pytest.raises(FileNotFoundError):
        build_feature_cache(tmp_path / "x.npy", list(images), load, backbone(), PREPROCESS,
                            batch_size=2, progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="duplicate"):
        build_feature_cache(tmp_path / "x.npy", ["a", "a"], load, backbone(), PREPROCESS,
                            progress=False)


def test_cache_from_image_files(tmp_path):
    colours = {"r": (255, 0, 0), "g": (0, 255, 0), "b": (0, 0, 255)}
    for name, rgb in colours.items():
        Image.new("RGB", (40, 20), rgb).save(tmp_path / f"{name}.png")
    transform = simple_transform(16)
    load = image_loader(lambda n: tmp_path / f"{n}.png", transform)
    model = backbone()
    cache = build_feature_cache(tmp_path / "feats.npy", list(colours), load, model,
                                transform.config, workers=2, progress=False)
    pixels = torch.stack([transform(Image.new("RGB", (16, 16), c)) for c in colours.values()])
    torch.testing.assert_close(cache[list(colours)],
                               model.frozen_features(pixels).half().float())


# --- preprocessing -------------------------------------------------------------------------

def test_target_pad_sizes_by_hand():
    assert target_pad_sizes(300, 100) == (0, 70)  # 300/1.25 = 240 -> (240-100)/2
    assert target_pad_sizes(100, 300) == (70, 0)
    assert target_pad_sizes(120, 100) == (0, 0)  # ratio 1.2 < 1.25: untouched
    assert target_pad_sizes(125, 100) == (0, 0)  # exactly 1.25: padded by zero
    assert target_pad_sizes(301, 100) == (0, 70)  # int() truncates (70.4)
    padded = target_pad(Image.new("RGB", (300, 100), (255, 255, 255)))
    assert padded.size == (300, 240)
    array = np.asarray(padded)
    assert (array[:70] == 0).all() and (array[170:] == 0).all() and (array[70:170] == 255).all()


def test_targetpad_transform_end_to_end():
    image = Image.new("RGB", (300, 100), (255, 255, 255))
    assert resize_shorter(target_pad(image), 224).size == (280, 224)  # int(224*300/240)
    tensor = targetpad_transform(1.25, 224)(image)
    assert tensor.shape == (3, 224, 224) and tensor.dtype == torch.float32
    black = (-torch.tensor(CLIP_MEAN) / torch.tensor(CLIP_STD))[:, None]
    white = ((1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD))[:, None]
    # 70 of 240 rows are padding; after scaling by 224/240 rows 0..60 are pure black.
    torch.testing.assert_close(tensor[:, :60].reshape(3, -1), black.expand(3, 60 * 224))
    torch.testing.assert_close(tensor[:, 80:140].reshape(3, -1), white.expand(3, 60 * 224))
    square = targetpad_transform()(Image.new("RGB", (250, 230), (0, 0, 0)))
    torch.testing.assert_close(square, black[..., None].expand(3, 224, 224))


def test_center_crop_offsets_follow_torchvision_rounding():
    image = Image.new("L", (281, 224))
    image.putpixel((28, 0), 255)  # round(57 / 2) = round(28.5) = 28 (banker's rounding)
    cropped = center_crop(image, 224)
    assert cropped.size == (224, 224) and cropped.getpixel((0, 0)) == 255


def test_padding_happens_before_rgb_conversion():
    palette = Image.new("P", (300, 100), 1)
    palette.putpalette([255, 0, 0] + [0, 255, 0] + [0, 0, 0] * 254)  # index 0 is red
    padded = target_pad(palette).convert("RGB")
    assert padded.getpixel((0, 0)) == (255, 0, 0)  # palette index 0, as torchvision pads
    assert padded.getpixel((150, 120)) == (0, 255, 0)
    rgba = Image.new("RGBA", (300, 100), (0, 0, 255, 255))
    assert target_pad(rgba).convert("RGB").getpixel((0, 0)) == (0, 0, 0)


def test_to_tensor_and_simple_transform(tmp_path):
    image = Image.new("RGB", (10, 6), (51, 102, 204))
    tensor = to_tensor_normalised(image, None, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert tensor.shape == (3, 6, 10)
    expected = (torch.tensor([0.2, 0.4, 0.8]) - 0.5) / 0.25
    torch.testing.assert_close(tensor[:, 0, 0], expected)
    assert to_tensor_normalised(image, 4, CLIP_MEAN, CLIP_STD).shape == (3, 4, 4)
    image.convert("L").save(tmp_path / "grey.png")
    assert load_image(tmp_path / "grey.png").mode == "RGB"
    assert load_image(tmp_path / "grey.png", mode=None).mode == "L"
    transform = simple_transform(8)
    out = transform(load_image(tmp_path / "grey.png"))
    assert out.shape == (3, 8, 8)
    assert build_transform(transform.config) == transform
    assert build_transform(targetpad_transform().config) == targetpad_transform()
