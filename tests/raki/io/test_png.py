"""Previews, contact sheets and comparison strips written as PNG and read back by Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raki.io.png import (
    enlargement,
    robust_window,
    to_uint8,
    write_contact_sheet,
    write_image_strip,
    write_previews,
)

SLICES, READOUT, PHASE = 3, 32, 24


def make_image() -> np.ndarray:
    """Noise with a bright block near the top-left (low kx, low ky) and one hot pixel."""
    rng = np.random.default_rng(2)
    image = np.abs(rng.standard_normal((SLICES, READOUT, PHASE))).astype(np.float32) * 0.1
    image[:, 2:8, 3:6] = 1.0
    image[:, -1, -1] = 1000.0  # a spike the window must ignore
    return image


def read(path: Path) -> Image.Image:
    with Image.open(path) as picture:
        picture.load()
        return picture


def shrunk(levels: np.ndarray, factors: tuple[int, int]) -> np.ndarray:
    """The mean of each factors-sized block: an enlarged preview back at the matrix size."""
    rows, columns = levels.shape[0] // factors[0], levels.shape[1] // factors[1]
    blocks = levels.reshape(rows, factors[0], columns, factors[1]).astype(np.float64)
    return blocks.mean(axis=(1, 3))


def test_one_8bit_png_per_slice_with_readout_down_the_rows(tmp_path: Path) -> None:
    paths = write_previews(make_image(), tmp_path / "previews", long_side=READOUT)
    assert [p.name for p in paths] == ["slice_000.png", "slice_001.png", "slice_002.png"]
    for path in paths:
        picture = read(path)
        assert (picture.format, picture.mode) == ("PNG", "L")
        assert picture.size == (PHASE, READOUT)  # (width, height): ky across, kx down
        levels = np.asarray(picture)
        # The block is white although a 1000x spike exists: the window is robust.
        assert levels[2:8, 3:6].min() == 255
        assert levels[20, 20] < 128
        assert levels.std() > 10
    assert sorted(p.name for p in (tmp_path / "previews").iterdir()) == [p.name for p in paths]


def test_preview_names_can_be_chosen(tmp_path: Path) -> None:
    paths = write_previews(make_image(), tmp_path, names=["a", "b.png", "c"])
    assert [p.name for p in paths] == ["a.png", "b.png", "c.png"]
    with pytest.raises(ValueError, match="2 names for 3 slices"):
        write_previews(make_image(), tmp_path, names=["a", "b"])
    with pytest.raises(ValueError, match="plain file names"):
        write_previews(make_image(), tmp_path, names=["a", "b", "../c"])


def test_contact_sheet_holds_every_slice_in_a_grid(tmp_path: Path) -> None:
    path = write_contact_sheet(
        make_image(), tmp_path / "sheet.png", columns=2, numbered=False, long_side=2 * READOUT
    )  # at the matrix size: one pixel per image pixel
    picture = read(path)
    assert picture.mode == "L"
    gap = 4
    assert picture.size == (2 * PHASE + gap, 2 * READOUT + gap)
    levels = np.asarray(picture)
    for row, column in [(0, 0), (0, 1), (1, 0)]:
        top, left = row * (READOUT + gap), column * (PHASE + gap)
        assert levels[top + 2 : top + 8, left + 3 : left + 6].min() == 255
    # The fourth cell is empty.
    assert levels[READOUT + gap :, PHASE + gap :].max() == 0


def test_contact_sheet_default_is_nearly_square(tmp_path: Path) -> None:
    sheet = write_contact_sheet(np.ones((5, 8, 8), np.float32), tmp_path / "s.png", long_side=24)
    picture = read(sheet)
    assert picture.size == (3 * 8 + 2 * 4, 2 * 8 + 4)


def test_image_strip_puts_labelled_panels_side_by_side(tmp_path: Path) -> None:
    image = make_image()
    panels = {
        "reference": image[0],
        "zero-fill": image[0] * 0.5,
        "GRAPPA": image[1],
        "RAKI": image[2],
        "error x10": np.abs(image[0] - image[2]),
    }
    picture = read(write_image_strip(panels, tmp_path / "strip.png"))
    assert picture.mode == "L"
    width, height = picture.size
    # Panels are enlarged to at least 128 px tall and laid out left to right.
    assert height >= 128 and width >= 5 * 128 * PHASE / READOUT
    levels = np.asarray(picture)
    assert levels.std() > 10
    # Labels are drawn in the band above the panels.
    assert levels[:18].max() == 255


def test_image_strip_with_a_shared_window_shows_brightness_differences(tmp_path: Path) -> None:
    image = make_image()[0]
    image[-1, -1] = 0.0
    panels = {"full": image, "half": image * 0.5}
    shared = read(write_image_strip(panels, tmp_path / "s.png", window=robust_window(image)))
    own = read(write_image_strip(panels, tmp_path / "o.png"))
    assert shared.size == own.size
    left_half, right_half = np.split(np.asarray(shared)[30:], 2, axis=1)
    assert right_half.max() < 200 < left_half.max()
    left_half, right_half = np.split(np.asarray(own)[30:], 2, axis=1)
    assert right_half.max() == left_half.max() == 255


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2D"):
        write_image_strip({"volume": make_image()}, tmp_path / "s.png")
    with pytest.raises(ValueError, match="no images"):
        write_image_strip({}, tmp_path / "s.png")
    with pytest.raises(ValueError, match="NaN"):
        write_previews(np.full((1, 4, 4), np.nan), tmp_path)
    assert not list(tmp_path.iterdir())


def test_a_constant_image_is_not_a_division_by_zero(tmp_path: Path) -> None:
    (path,) = write_previews(np.zeros((1, 8, 8), np.float32), tmp_path)
    assert np.asarray(read(path)).max() == 0


def test_a_small_matrix_is_enlarged_to_512_px_by_repeating_each_pixel(tmp_path: Path) -> None:
    image = make_image()
    (path, *_) = write_previews(image, tmp_path)
    picture = read(path)
    factor = 512 // READOUT  # 16: the long side (readout, 32) becomes 512
    assert picture.size == (PHASE * factor, READOUT * factor)
    levels = np.asarray(picture)
    expected = to_uint8(image[0], robust_window(image))
    # Each block is one image pixel repeated: averaging it gives the image back, exactly.
    assert np.array_equal(shrunk(levels, (factor, factor)), expected)
    assert np.array_equal(levels[::factor, ::factor], expected)
    assert "not for diagnosis" in picture.info["Description"]
    assert "16x16" in picture.info["Description"]


def test_the_pixels_keep_their_physical_shape_where_the_spacing_is_known(tmp_path: Path) -> None:
    image = make_image()
    # 0.5 mm rows, 1 mm columns: a column pixel is twice as wide as a row pixel is tall.
    factors = enlargement((READOUT, PHASE), (0.5, 1.0))
    assert factors[1] == 2 * factors[0]
    assert max(READOUT * factors[0], PHASE * factors[1]) >= 512
    (path, *_) = write_previews(image, tmp_path, pixel_spacing_mm=(0.5, 1.0))
    picture = read(path)
    assert picture.size == (PHASE * factors[1], READOUT * factors[0])
    expected = to_uint8(image[0], robust_window(image))
    assert np.array_equal(shrunk(np.asarray(picture), factors), expected)
    # A large matrix is left as it is; a spacing that says nothing usable counts as square.
    assert enlargement((640, 320)) == (1, 1)
    assert enlargement((320, 320)) == (2, 2)
    assert enlargement((64, 64), (0.0, float("nan"))) == (8, 8)


def test_the_contact_sheet_is_enlarged_as_a_whole(tmp_path: Path) -> None:
    image = make_image()
    picture = read(write_contact_sheet(image, tmp_path / "sheet.png", numbered=False))
    # 3 slices in a 2 x 2 grid: cells of at least 256 px on the long side, 4 px apart.
    factor = 256 // READOUT
    assert picture.size == (2 * PHASE * factor + 4, 2 * READOUT * factor + 4)
    first = np.asarray(picture)[: READOUT * factor, : PHASE * factor]
    expected = to_uint8(image[0], robust_window(image))
    assert np.array_equal(shrunk(first, (factor, factor)), expected)
    assert "not for diagnosis" in picture.info["Description"]
