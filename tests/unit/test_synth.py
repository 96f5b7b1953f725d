from __future__ import annotations

import numpy as np
import pytest

from data.schema import DEFECT_CLASSES, split_of
from data.synth import CLASS_WEIGHTS, blur, generate, render


def test_same_seed_same_pixels_other_seed_other_pixels():
    a = [s.png() for s in generate(seed=3, count=5)]
    b = [s.png() for s in generate(seed=3, count=5)]
    c = [s.png() for s in generate(seed=4, count=5)]
    assert a == b
    assert all(x != y for x, y in zip(a, c))


def test_index_streams_are_independent_of_batching():
    whole = list(generate(seed=1, count=6))
    tail = list(generate(seed=1, count=3, start=3))
    assert [s.png() for s in whole[3:]] == [s.png() for s in tail]
    assert [s.image_id for s in whole[3:]] == [s.image_id for s in tail]


def test_every_class_appears_with_its_weight():
    labels = [s.label for s in generate(seed=0, count=1200)]
    assert set(labels) == set(DEFECT_CLASSES)
    for cls, w in CLASS_WEIGHTS.items():
        assert abs(labels.count(cls) / len(labels) - w) < 0.05


@pytest.mark.parametrize("size", [64, 100, 256])
def test_sizes_and_boxes_inside_the_image(size):
    for cls in DEFECT_CLASSES:
        pixels, label, _, (x, y, w, h) = render(5, 1, size, label=cls)
        assert pixels.shape == (size, size) and pixels.dtype == np.uint8 and label == cls
        assert 0 <= x < size and 0 <= y < size and w > 0 and h > 0 and x + w <= size and y + h <= size


def _defect_contrast(cls: str, index: int) -> float:
    """Relative brightness change inside the defect box against the whole image."""
    pixels, _, _, (x, y, w, h) = render(11, index, 64, label=cls)
    a = pixels[y : y + h, x : x + w].astype(float).mean()
    b = pixels.astype(float).mean()
    return abs(a - b) / b


def test_mura_is_faint_and_particles_are_small():
    # Honest data: mura changes brightness by a few percent at most; particles cover few pixels.
    assert np.median([_defect_contrast("mura", i) for i in range(40)]) < 0.08
    areas = [w * h for i in range(40) for (_, _, _, (x, y, w, h)) in [render(2, i, 64, label="particle")]]
    assert np.median(areas) < 0.05 * 64 * 64  # a particle's box covers under 5 % of the image


def test_blur_keeps_mean_and_smooths():
    rng = np.random.default_rng(0)
    img = rng.random((32, 32))
    out = blur(img, 1.5)
    assert out.shape == img.shape
    assert abs(out.mean() - img.mean()) < 0.01 and out.std() < img.std() / 2


def test_split_rule_is_stable_and_proportioned():
    ids = [f"fab-a-s0-{i:07d}" for i in range(5000)]
    splits = [split_of(i) for i in ids]
    assert splits == [split_of(i) for i in ids]
    assert 0.77 < splits.count("train") / 5000 < 0.83
    assert 0.08 < splits.count("test") / 5000 < 0.12
