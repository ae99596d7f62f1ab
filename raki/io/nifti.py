"""Write a reconstructed magnitude volume as NIfTI-1 for research tools (FSL, ANTs, nibabel).

Voxel (i, j, k) is (kx readout, ky phase, slice): the array is `image.transpose(1, 2, 0)`.
The affine is the DICOM writer's pixel grid (raki.io.dicom.ImageGrid) turned from DICOM's LPS
into NIfTI's RAS (x and y negated), so a voxel lands on the same patient point in both
outputs. No identifier is written: the header's description names only the software.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from raki.errors import FileFormatError
from raki.io.dicom import image_grid, validated_image
from raki.scan import Scan

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SCANNER_XFORM = 1  # NIFTI_XFORM_SCANNER_ANAT
SUFFIXES = (".nii.gz", ".nii")


def nifti_affine(image_shape: tuple[int, ...], scan: Scan) -> np.ndarray:
    """4x4 RAS affine taking voxel (kx, ky, slice) of a reconstruction of `scan` to mm."""
    return LPS_TO_RAS @ image_grid(image_shape, scan).affine_lps()


def write_nifti(image: np.ndarray, scan: Scan, path: str | Path) -> Path:
    """Write `image` [slice, kx, ky] as float32 NIfTI-1 (.nii.gz or .nii) at `path`, atomically.

    qform and sform both carry the scanner-anatomical affine (the qform is its closest
    rotation + zooms, exact for an orthogonal slice stack); pixdim holds the voxel sizes in mm.
    """
    path = Path(path)
    suffix = next((s for s in SUFFIXES if path.name.endswith(s)), None)
    if suffix is None:
        raise FileFormatError(path, "a NIfTI file name must end in .nii.gz or .nii")
    image = validated_image(image)
    affine = nifti_affine(image.shape, scan)
    volume = nib.Nifti1Image(np.ascontiguousarray(image.transpose(1, 2, 0)), affine)
    header = volume.header
    header.set_data_dtype(np.float32)
    header.set_xyzt_units(xyz="mm")
    volume.set_sform(affine, code=SCANNER_XFORM)
    volume.set_qform(affine, code=SCANNER_XFORM)
    header["descrip"] = b"mrictl raki reconstruction"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        nib.save(volume, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
