"""Write a reconstructed magnitude volume as a DICOM MR Image series that a PACS accepts.

Layout: one MR Image Storage instance per slice, explicit VR little endian, 16-bit unsigned
pixels, windowed as stored (the MR Image IOD has no Modality LUT), that a Real World Value
Mapping (slope, intercept) maps back to the float values.

Orientation: DICOM rows follow kx (readout) and columns follow ky (phase encode), so pixel
(row r, column c) of slice s is `image[s, r, c]` with no flip or transpose. Hence
ImageOrientationPatient = (phase_dir, read_dir) (row cosines first: the direction in which the
column index grows), PixelSpacing = (readout spacing, phase spacing) and the NIfTI writer maps
voxel (i, j, k) = (kx, ky, slice) with the same `ImageGrid` (raki.io.nifti).

Position: the field of view is a box centred on each slice centre, tiled by the pixels, so
pixel r along an axis of N pixels sits at (r - (N - 1) / 2) * spacing from the centre and
ImagePositionPatient is the centre of the top-left pixel. (A centred FFT puts the isocentre
at index N/2 instead: half a pixel away, which scanner converters differ on too.)

Defaults when the scan does not say: axial (read = posterior, phase = left, normal = superior,
in LPS, i.e. IOP 1\\0\\0\\0\\1\\0), 1 mm in-plane pixels when the FOV is unknown, slice
thickness 1 mm, slices spaced by their thickness and centred on the origin.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from raki import __version__
from raki.errors import FileFormatError, InvalidScanError
from raki.scan import Identifiers, Scan

MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")
DEFAULT_SERIES_NUMBER = 901
# Each method's series gets its own number and name, so that the series of one scan that land in
# one study (RAKI beside GRAPPA...) can be told apart in a PACS.
METHOD_SERIES = {
    "raki": (901, "RAKI"),
    "rraki": (902, "residual RAKI"),
    "grappa": (903, "GRAPPA"),
    "zerofill": (904, "zero-filled"),
}
DEFAULT_THICKNESS_MM = 1.0
DEFAULT_PIXEL_MM = 1.0
AXIAL_READ_DIR = (0.0, 1.0, 0.0)
AXIAL_PHASE_DIR = (1.0, 0.0, 0.0)
DEIDENTIFICATION_METHOD = "mrictl: source held no patient identifiers; placeholders written"
MAX_STORED = 65535
MAX_UID_LENGTH = 64
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
SERIES_FILE = re.compile(r"IM\d{4,}\.dcm")


@dataclass(frozen=True)
class ImageGrid:
    """Where every pixel of a volume [slice, kx, ky] sits in the patient (LPS, mm).

    `read_dir` is the direction in which the kx (row) index grows, `phase_dir` the one in which
    the ky (column) index grows; `centres` holds the centre of each slice.
    """

    read_dir: np.ndarray
    phase_dir: np.ndarray
    read_spacing_mm: float
    phase_spacing_mm: float
    slice_thickness_mm: float
    centres: np.ndarray  # [slice, 3]
    shape: tuple[int, int, int]

    @property
    def normal(self) -> np.ndarray:
        """The DICOM slice normal: row cosines x column cosines."""
        return np.cross(self.phase_dir, self.read_dir)

    @property
    def top_left(self) -> np.ndarray:
        """ImagePositionPatient of each slice: the centre of pixel (0, 0), [slice, 3]."""
        _, rows, columns = self.shape
        offset = ((rows - 1) / 2) * self.read_spacing_mm * self.read_dir + (
            (columns - 1) / 2
        ) * self.phase_spacing_mm * self.phase_dir
        return self.centres - offset

    @property
    def slice_step(self) -> np.ndarray:
        """The mean vector from one slice centre to the next (normal x thickness for one slice)."""
        if self.shape[0] == 1:
            return self.normal * self.slice_thickness_mm
        return (self.centres[-1] - self.centres[0]) / (self.shape[0] - 1)

    @property
    def slice_spacing_mm(self) -> float:
        """Mean centre-to-centre distance of adjacent slices (DICOM's SpacingBetweenSlices)."""
        if self.shape[0] == 1:
            return self.slice_thickness_mm
        return float(np.mean(np.linalg.norm(np.diff(self.centres, axis=0), axis=1)))

    def affine_lps(self) -> np.ndarray:
        """4x4 matrix taking voxel (kx, ky, slice, 1) to patient LPS millimetres."""
        affine = np.eye(4)
        affine[:3, 0] = self.read_dir * self.read_spacing_mm
        affine[:3, 1] = self.phase_dir * self.phase_spacing_mm
        affine[:3, 2] = self.slice_step
        affine[:3, 3] = self.top_left[0]
        return affine


def _unit(vector: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float64)
    length = float(np.linalg.norm(array))
    if array.shape != (3,) or not np.isfinite(length) or length < 1e-6:
        raise InvalidScanError(f"geometry {name} must be a non-zero 3-vector")
    return array / length


def image_grid(image_shape: tuple[int, ...], scan: Scan) -> ImageGrid:
    """The pixel grid of a reconstruction of `scan` (which may be centre-cropped in-plane).

    The pixel size is the FOV over the scan's k-space matrix, so a crop keeps the resolution
    and stays centred on each slice centre.
    """
    if len(image_shape) != 3:
        raise InvalidScanError(f"image must be [slice, kx, ky], got shape {tuple(image_shape)}")
    slices, rows, columns = (int(n) for n in image_shape)
    if slices != scan.num_slices:
        raise InvalidScanError(f"image has {slices} slices but the scan has {scan.num_slices}")
    geometry = scan.geometry
    if geometry.read_dir is not None and geometry.phase_dir is not None:
        read_dir = _unit(geometry.read_dir, "read_dir")
        phase_dir = _unit(geometry.phase_dir, "phase_dir")
    else:
        read_dir, phase_dir = np.array(AXIAL_READ_DIR), np.array(AXIAL_PHASE_DIR)
    if abs(float(read_dir @ phase_dir)) > 1e-3:
        raise InvalidScanError("geometry read_dir and phase_dir are not perpendicular")
    resolution = geometry.resolution_mm(scan.matrix)
    read_mm, phase_mm = resolution if resolution else (DEFAULT_PIXEL_MM, DEFAULT_PIXEL_MM)
    if not (read_mm > 0 and phase_mm > 0):
        raise InvalidScanError("geometry fov_mm must be positive")
    thickness = geometry.slice_thickness_mm or DEFAULT_THICKNESS_MM
    if geometry.slice_positions_mm is not None:
        centres = np.asarray(geometry.slice_positions_mm, dtype=np.float64)
        if centres.shape != (slices, 3) or not np.isfinite(centres).all():
            raise InvalidScanError(
                f"geometry has {len(geometry.slice_positions_mm)} slice positions "
                f"for {slices} slices"
            )
    else:
        slice_dir = (
            _unit(geometry.slice_dir, "slice_dir")
            if geometry.slice_dir is not None
            else np.cross(phase_dir, read_dir)
        )
        steps = (np.arange(slices) - (slices - 1) / 2) * thickness
        centres = steps[:, None] * slice_dir[None, :]
    return ImageGrid(
        read_dir=read_dir,
        phase_dir=phase_dir,
        read_spacing_mm=float(read_mm),
        phase_spacing_mm=float(phase_mm),
        slice_thickness_mm=float(thickness),
        centres=centres,
        shape=(slices, rows, columns),
    )


@dataclass(frozen=True)
class Rescale:
    """The linear map stored = (value - intercept) / slope, written as DS strings."""

    slope: float
    intercept: float

    @classmethod
    def spanning(cls, image: np.ndarray) -> Rescale:
        low, high = float(image.min()), float(image.max())
        slope = (high - low) / MAX_STORED if high > low else 1.0
        # Quantise with the values a reader will parse back, not with the exact floats.
        return cls(_ds_float(slope), _ds_float(low))

    def stored(self, image: np.ndarray) -> np.ndarray:
        scaled = np.rint((image.astype(np.float64) - self.intercept) / self.slope)
        return np.clip(scaled, 0, MAX_STORED).astype(np.uint16)


def _real_world_mapping(rescale: Rescale) -> Dataset:
    """value = stored * slope + intercept: the RSS magnitude, in the k-space's own units."""
    item = Dataset()
    item.RealWorldValueFirstValueMapped = 0
    item.RealWorldValueLastValueMapped = MAX_STORED
    item.RealWorldValueIntercept = float(rescale.intercept)
    item.RealWorldValueSlope = float(rescale.slope)
    item.LUTExplanation = "RSS magnitude (orthonormal FFT of the k-space)"
    item.LUTLabel = "RSS"
    units = Dataset()
    units.CodeValue = "1"  # UCUM's unity: the magnitude carries the scanner's arbitrary units
    units.CodingSchemeDesignator = "UCUM"
    units.CodeMeaning = "no units"
    item.MeasurementUnitsCodeSequence = [units]
    return item


def _ds_float(value: float) -> float:
    return float(format_number_as_ds(float(value)))


def _ds(value: float) -> str:
    return format_number_as_ds(float(value))


def _text(value: str | None, max_length: int) -> str:
    """A string trimmed to its VR's maximum length; control characters removed."""
    if value is None:
        return ""
    cleaned = "".join(ch for ch in str(value) if ch.isprintable()).replace("\\", "/")
    return cleaned.strip()[:max_length]


def _date(value: str | None) -> str:
    cleaned = (value or "").replace("-", "").strip()
    return cleaned if re.fullmatch(r"\d{8}", cleaned) else ""


def _time(value: str | None) -> str:
    cleaned = (value or "").replace(":", "").strip()
    return cleaned if re.fullmatch(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?", cleaned) else ""


def _sex(value: str | None) -> str:
    first = (value or "").strip()[:1].upper()
    return first if first in {"M", "F", "O"} else ""


def is_valid_uid(value: str) -> bool:
    """Whether `value` (padding spaces aside) is a DICOM UID: dot-separated numbers without
    leading zeros, at most 64 characters (PS3.5 section 9.1).

    Checked here rather than by pydicom's `UID`, which warns (to stderr and its logger) with
    the value quoted, and a study's UID must not reach logs.
    """
    value = value.strip()
    return len(value) <= MAX_UID_LENGTH and _UID.fullmatch(value) is not None


def _valid_uid(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if not is_valid_uid(value):
        raise InvalidScanError(f"{what} is not a valid DICOM UID")
    return value.strip()


def _window(image: np.ndarray) -> tuple[float, float]:
    """Window centre and width spanning 0 (or the minimum) to the 99.5th percentile."""
    low = min(0.0, float(image.min()))
    high = float(np.percentile(image, 99.5))
    if high <= low:
        high = float(image.max()) if image.max() > low else low + 1.0
    return (low + high) / 2, high - low


def _patient_and_study(ds: Dataset, identifiers: Identifiers, study_uid: str) -> None:
    """Patient and General Study modules; placeholders when the source named no patient.

    Study date and time come from the source only (empty otherwise), so that series written
    at different times into one study agree.
    """
    anonymous = identifiers.patient_name is None and identifiers.patient_id is None
    if anonymous:
        digest = hashlib.sha256(study_uid.encode()).hexdigest()[:12].upper()
        ds.PatientName = "ANONYMOUS^"  # family name only; no caret reads as the retired form
        ds.PatientID = f"ANON-{digest}"
        ds.PatientBirthDate = ""
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = DEIDENTIFICATION_METHOD
    else:
        ds.PatientName = _text(identifiers.patient_name, 64)
        ds.PatientID = _text(identifiers.patient_id, 64)
        ds.PatientBirthDate = _date(identifiers.patient_birth_date)
    ds.PatientSex = _sex(identifiers.patient_sex)
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = _date(identifiers.study_date)
    ds.StudyTime = _time(identifiers.study_time)
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = _text(identifiers.accession_number, 16)
    if identifiers.study_description:
        ds.StudyDescription = _text(identifiers.study_description, 64)


def _series_dataset(
    scan: Scan,
    grid: ImageGrid,
    rescale: Rescale,
    window: tuple[float, float],
    *,
    series_description: str,
    method: str,
    series_number: int,
    study_uid: str,
) -> Dataset:
    """Every attribute the slices share."""
    now = dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    _patient_and_study(ds, scan.identifiers, study_uid)
    # General Series
    ds.Modality = "MR"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = int(series_number)
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.SeriesDescription = _text(series_description, 64)
    if scan.protocol:
        ds.ProtocolName = _text(scan.protocol, 64)
    ds.PatientPosition = ""
    # Empty rather than absent: dciodvfy cannot evaluate its condition and calls absence an
    # error; empty draws only a warning.
    ds.Laterality = ""
    # Frame of Reference: our positions are only as good as the source's, in its own frame;
    # one per study, so that viewers link the series of one scan (RAKI beside GRAPPA).
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study_uid, "frame of reference"])
    ds.PositionReferenceIndicator = ""
    # General Equipment: the software that made these instances
    ds.Manufacturer = "mrictl"
    ds.ManufacturerModelName = "raki"
    ds.SoftwareVersions = __version__
    if scan.identifiers.institution_name:
        ds.InstitutionName = _text(scan.identifiers.institution_name, 64)
    # General Image
    ds.ContentDate, ds.ContentTime = date, time
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    ds.DerivationDescription = _text(
        f"Reconstructed from raw k-space by mrictl ({method}), R={scan.acceleration}, "
        f"{scan.acs.lines if scan.acs else 0} ACS lines, RSS coil combination",
        1024,
    )
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    # Image Plane
    ds.PixelSpacing = [_ds(grid.read_spacing_mm), _ds(grid.phase_spacing_mm)]
    ds.ImageOrientationPatient = [_ds(v) for v in (*grid.phase_dir, *grid.read_dir)]
    ds.SliceThickness = _ds(grid.slice_thickness_mm)
    # Image Pixel
    _, ds.Rows, ds.Columns = grid.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    # The MR Image IOD has no Modality LUT: viewers show the stored values as they are, so
    # the window is in stored units and the map back to the reconstruction's values is a
    # Real World Value Mapping, where MR scanners put it too.
    ds.WindowCenter = _ds((window[0] - rescale.intercept) / rescale.slope)
    ds.WindowWidth = _ds(window[1] / rescale.slope)
    ds.RealWorldValueMappingSequence = [_real_world_mapping(rescale)]
    # LINEAR_EXACT allows any positive width; plain LINEAR demands >= 1, too wide for
    # the small magnitudes an orthonormal FFT gives.
    ds.VOILUTFunction = "LINEAR_EXACT"
    # MR Image: the k-space alone does not say which sequence acquired it.
    ds.ScanningSequence = "RM"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = ""
    ds.RepetitionTime = ""
    ds.EchoTime = ""
    ds.EchoTrainLength = ""
    ds.SpacingBetweenSlices = _ds(grid.slice_spacing_mm)
    ds.AcquisitionMatrix = [scan.matrix[0], 0, 0, scan.matrix[1]]
    ds.InPlanePhaseEncodingDirection = "ROW"  # columns follow ky
    return ds


def _instance(series: Dataset, grid: ImageGrid, pixels: np.ndarray, index: int) -> Dataset:
    ds = copy.deepcopy(series)
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [_ds(v) for v in grid.top_left[index]]
    ds.SliceLocation = _ds(float(grid.centres[index] @ grid.normal))
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def validated_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or min(image.shape) == 0:
        raise InvalidScanError(f"image must be a non-empty [slice, kx, ky], got {image.shape}")
    if np.iscomplexobj(image):
        raise InvalidScanError("image must be real (a magnitude), got complex values")
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise InvalidScanError("image holds NaN or infinite values")
    return image


def _replace_dir(staging: Path, out_dir: Path) -> None:
    """Swap a finished folder into place; an old series of ours there is replaced."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise FileFormatError(out_dir, "exists and is not a folder")
        foreign = [p for p in out_dir.iterdir() if not SERIES_FILE.fullmatch(p.name)]
        if foreign:
            raise FileFormatError(out_dir, "folder holds files other than a DICOM series")
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / out_dir.name)
        os.replace(staging, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(staging, out_dir)


def study_uid_for(key: str) -> str:
    """The same valid Study Instance UID for the same `key` (e.g. a scan's content hash): for
    sources that name no study, so that every series made from one scan lands in one study."""
    return str(generate_uid(entropy_srcs=[key, "study"]))


def write_dicom_series(
    image: np.ndarray,
    scan: Scan,
    out_dir: str | Path,
    *,
    series_description: str | None = None,
    method: str = "raki",
    series_number: int | None = None,
    study_uid: str | None = None,
) -> list[Path]:
    """Write `image` [slice, kx, ky] as one MR Image file per slice in `out_dir`.

    The study is `study_uid`, else the scan's own study, else a new one, so that several
    series (RAKI, GRAPPA...) of one scan can share a study; they share its frame of reference
    too (one per study: the positions are the source's). The series number and description
    default to the method's (`METHOD_SERIES`). The folder is built beside
    `out_dir` and renamed into place, so readers never see half a series. Returns the files
    in slice order (IM0001.dcm, ...).
    """
    image = validated_image(image)
    out_dir = Path(out_dir)
    grid = image_grid(image.shape, scan)
    study = (
        _valid_uid(study_uid, "study_uid")
        or _valid_uid(scan.identifiers.study_instance_uid, "the scan's Study Instance UID")
        or str(generate_uid())
    )
    rescale = Rescale.spanning(image)
    number, label = METHOD_SERIES.get(method, (DEFAULT_SERIES_NUMBER, method))
    series = _series_dataset(
        scan,
        grid,
        rescale,
        _window(image),
        series_description=series_description or f"mrictl {label}",
        method=method,
        series_number=number if series_number is None else series_number,
        study_uid=study,
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        names = []
        stored = rescale.stored(image)
        for index in range(image.shape[0]):
            ds = _instance(series, grid, stored[index], index)
            name = f"IM{index + 1:04d}.dcm"
            ds.save_as(staging / name, enforce_file_format=True)
            names.append(name)
        _replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [out_dir / name for name in names]
