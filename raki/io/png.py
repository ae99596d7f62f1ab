"""8-bit PNG previews of reconstructions: per slice, a contact sheet, a labelled comparison strip.

Orientation: a slice [kx, ky] is drawn with kx (readout) running down the rows and ky
(phase) across the columns, with no flip: the picture a DICOM viewer shows for the series from
raki.io.dicom (and fastMRI's convention). For the default axial geometry that is the usual
radiological view: anterior at the top, the patient's left on the right of the screen.

Windowing is robust: black at 0 (or the minimum, if lower), white at the 99.5th percentile, so a
few bright pixels do not darken the whole picture. One window serves a whole volume.

Previews are for looking at, not for diagnosis (the DICOM series is the image): a small matrix
(64 px) is enlarged by repeating each pixel a whole number of times, to at least 512 px on the
long side, in the shape of the pixels where their spacing is known, and every PNG says so in its
"Description" text chunk.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

WHITE_PERCENTILE = 99.5
GAP_PX = 4
LABEL_PX = 14
MIN_PANEL_PX = 128
PREVIEW_LONG_SIDE_PX = 512
PREVIEW_NOTE = (
    "Preview for viewing, not for diagnosis: 8-bit, windowed at 0 to the 99.5th percentile, "
    "each image pixel repeated {rows}x{columns} (rows x columns)."
)


def enlargement(
    shape: tuple[int, int],
    pixel_spacing_mm: tuple[float, float] | None = None,
    long_side: int = PREVIEW_LONG_SIDE_PX,
) -> tuple[int, int]:
    """Whole repeat factors (rows, columns) that make an image of `shape` at least `long_side`
    pixels on its long side and keep the pixels' physical shape (row and column spacing in mm,
    square when unknown) to within half a preview pixel. Nearest neighbour: no value is made
    up, and averaging each block gives the image back."""
    rows_mm, columns_mm = pixel_spacing_mm or (1.0, 1.0)
    if not (math.isfinite(rows_mm) and math.isfinite(columns_mm)) or min(rows_mm, columns_mm) <= 0:
        rows_mm = columns_mm = 1.0
    finest = min(rows_mm, columns_mm)
    row_units, column_units = rows_mm / finest, columns_mm / finest  # each at least 1
    longest = max(shape[0] * row_units, shape[1] * column_units)
    per_unit = max(1, math.ceil(long_side / longest))
    return max(1, round(per_unit * row_units)), max(1, round(per_unit * column_units))


def _enlarged(levels: np.ndarray, factors: tuple[int, int]) -> Image.Image:
    return Image.fromarray(np.repeat(np.repeat(levels, factors[0], axis=0), factors[1], axis=1))


def robust_window(image: np.ndarray) -> tuple[float, float]:
    """(black, white) levels: 0 or the minimum, and the 99.5th percentile."""
    values = np.asarray(image, dtype=np.float64)
    black = min(0.0, float(values.min()))
    white = float(np.percentile(values, WHITE_PERCENTILE))
    if white <= black:
        white = float(values.max())
    if white <= black:
        white = black + 1.0
    return black, white


def to_uint8(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Map `window` linearly onto 0..255, clipping outside it."""
    black, white = window
    scaled = (np.asarray(image, dtype=np.float64) - black) / (white - black)
    return np.rint(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def _volume(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3 or min(image.shape) == 0 or np.iscomplexobj(image):
        raise ValueError(f"expected a real image [slice, kx, ky], got {image.shape} {image.dtype}")
    if not np.isfinite(image).all():
        raise ValueError("image holds NaN or infinite values")
    return image


def _save(picture: Image.Image, path: Path, factors: tuple[int, int] = (1, 1)) -> Path:
    """Write a PNG, saying in its text that it is a preview, under a temporary name beside
    `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = PngInfo()
    text.add_text("Description", PREVIEW_NOTE.format(rows=factors[0], columns=factors[1]))
    text.add_text("Software", "mrictl (raki.io.png)")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            picture.save(stream, format="PNG", pnginfo=text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def write_previews(
    image: np.ndarray,
    out_dir: str | Path,
    *,
    names: Sequence[str] | None = None,
    pixel_spacing_mm: tuple[float, float] | None = None,
    long_side: int = PREVIEW_LONG_SIDE_PX,
) -> list[Path]:
    """One grey PNG per slice of `image` [slice, kx, ky], enlarged for viewing (`enlargement`:
    at least `long_side` px; `pixel_spacing_mm` is (readout, phase), the DICOM PixelSpacing).

    `names` are the file names (".png" added when missing); default slice_000.png, ...
    """
    volume = _volume(image)
    if names is None:
        names = [f"slice_{index:03d}.png" for index in range(volume.shape[0])]
    if len(names) != volume.shape[0]:
        raise ValueError(f"{len(names)} names for {volume.shape[0]} slices")
    names = [name if name.lower().endswith(".png") else f"{name}.png" for name in names]
    if any(Path(name).name != name for name in names):
        raise ValueError("preview names must be plain file names, not paths")
    out_dir = Path(out_dir)
    window = robust_window(volume)
    factors = enlargement(volume.shape[1:], pixel_spacing_mm, long_side)
    return [
        _save(_enlarged(to_uint8(slice_, window), factors), out_dir / name, factors)
        for slice_, name in zip(volume, names, strict=True)
    ]


def write_contact_sheet(
    image: np.ndarray,
    path: str | Path,
    *,
    columns: int | None = None,
    numbered: bool = True,
    pixel_spacing_mm: tuple[float, float] | None = None,
    long_side: int = PREVIEW_LONG_SIDE_PX,
) -> Path:
    """All slices of `image` [slice, kx, ky] in a grid (row by row), numbered from 1; the cells
    are enlarged as previews are, so that the sheet is at least `long_side` px on its long side.
    """
    volume = _volume(image)
    count = volume.shape[0]
    columns = columns or math.ceil(math.sqrt(count))
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    grid_rows = math.ceil(count / columns)
    cell_side = math.ceil(long_side / max(grid_rows, columns))
    factors = enlargement(volume.shape[1:], pixel_spacing_mm, cell_side)
    rows_px, columns_px = volume.shape[1] * factors[0], volume.shape[2] * factors[1]
    sheet = Image.new(
        "L",
        (
            columns * columns_px + (columns - 1) * GAP_PX,
            grid_rows * rows_px + (grid_rows - 1) * GAP_PX,
        ),
    )
    window = robust_window(volume)
    draw = ImageDraw.Draw(sheet)
    font = _font(max(8, min(rows_px, columns_px) // 6))
    for index, slice_ in enumerate(volume):
        left = (index % columns) * (columns_px + GAP_PX)
        top = (index // columns) * (rows_px + GAP_PX)
        sheet.paste(_enlarged(to_uint8(slice_, window), factors), (left, top))
        if numbered:
            draw.text((left + 1, top), str(index + 1), fill=255, font=font)
    return _save(sheet, Path(path), factors)


def write_image_strip(
    images: Mapping[str, np.ndarray],
    path: str | Path,
    *,
    window: tuple[float, float] | None = None,
) -> Path:
    """Labelled 2D images side by side, e.g. reference | zero-fill | GRAPPA | RAKI | error.

    Each panel gets its own robust window unless `window` is given (pass the reference's
    window to compare brightness across methods). Small images are enlarged by a whole
    factor (nearest neighbour) so that panels are at least 128 pixels tall and labels fit.
    """
    if not images:
        raise ValueError("no images to draw")
    panels = {}
    for label, picture in images.items():
        array = np.asarray(picture)
        if array.ndim != 2:
            raise ValueError(f"panel {label!r} must be 2D, got shape {array.shape}")
        panels[label] = _volume(array)[0]
    tallest = max(array.shape[0] for array in panels.values())
    zoom = max(1, math.ceil(MIN_PANEL_PX / tallest))
    font = _font(LABEL_PX)
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    tiles = []
    for label, array in panels.items():
        levels = to_uint8(array, window or robust_window(array))
        tile = Image.fromarray(levels).resize(
            (array.shape[1] * zoom, array.shape[0] * zoom), Image.Resampling.NEAREST
        )
        text_width = math.ceil(measure.textlength(label, font=font))
        tiles.append((label, tile, max(tile.width, text_width)))
    label_height = LABEL_PX + 2 * GAP_PX
    width = sum(tile_width for _, _, tile_width in tiles) + GAP_PX * (len(tiles) + 1)
    height = label_height + tallest * zoom + GAP_PX
    strip = Image.new("L", (width, height))
    draw = ImageDraw.Draw(strip)
    left = GAP_PX
    for label, tile, tile_width in tiles:
        draw.text((left, GAP_PX), label, fill=255, font=font)
        strip.paste(tile, (left + (tile_width - tile.width) // 2, label_height))
        left += tile_width + GAP_PX
    return _save(strip, Path(path), (zoom, zoom))
