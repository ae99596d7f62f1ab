"""fastMRI files as the fastMRI dataset ships them (train and test layouts), written by h5py."""

from __future__ import annotations

import h5py
import numpy as np

from raki.io import detect_format, read_scan
from raki.sampling import equispaced_mask
from tests.raki.io.synthetic import random_kspace

# The shape of a header in fastMRI's files: schema attributes, elements we do not use, and the
# oversampled encoded space (readout FOV twice the reconstructed one).
FASTMRI_STYLE_HEADER = """<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    xsi:schemaLocation="http://www.ismrm.org/ISMRMRD ismrmrd.xsd">
  <studyInformation><studyTime>16:21:03</studyTime></studyInformation>
  <measurementInformation>
    <measurementID>45160_39871338_39871346_1433</measurementID>
    <patientPosition>HFS</patientPosition>
    <protocolName>AX T2</protocolName>
    <frameOfReferenceUID>1.3.12.2.1107.5.2.18.41185.1.20151002160810168.0.0.0</frameOfReferenceUID>
  </measurementInformation>
  <acquisitionSystemInformation>
    <systemVendor>SIEMENS</systemVendor>
    <systemFieldStrength_T>2.89362</systemFieldStrength_T>
    <receiverChannels>4</receiverChannels>
    <coilLabel><coilNumber>0</coilNumber><coilName>Head_32:1:H11</coilName></coilLabel>
  </acquisitionSystemInformation>
  <experimentalConditions><H1resonanceFrequency_Hz>123251815</H1resonanceFrequency_Hz></experimentalConditions>
  <encoding>
    <encodedSpace>
      <matrixSize><x>32</x><y>24</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>440</x><y>220</y><z>7.5</z></fieldOfView_mm>
    </encodedSpace>
    <reconSpace>
      <matrixSize><x>16</x><y>16</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>220</x><y>220</y><z>7.5</z></fieldOfView_mm>
    </reconSpace>
    <trajectory>cartesian</trajectory>
    <encodingLimits>
      <kspace_encoding_step_1><minimum>0</minimum><maximum>23</maximum><center>12</center>
      </kspace_encoding_step_1>
    </encodingLimits>
    <parallelImaging>
      <accelerationFactor><kspace_encoding_step_1>1</kspace_encoding_step_1>
        <kspace_encoding_step_2>1</kspace_encoding_step_2></accelerationFactor>
      <calibrationMode>other</calibrationMode>
    </parallelImaging>
  </encoding>
  <sequenceParameters><TR>6000</TR><TE>113</TE><TI>100</TI><flipAngle_deg>150</flipAngle_deg>
  </sequenceParameters>
</ismrmrdHeader>
"""


def test_fastmri_train_file(tmp_path):
    path = tmp_path / "file_brain_AXT2_200_2000019.h5"
    kspace = random_kspace((3, 4, 32, 24))
    with h5py.File(path, "w") as handle:
        handle["kspace"] = kspace
        handle["reconstruction_rss"] = np.abs(kspace[:, 0, :16, :16])
        handle.attrs["acquisition"] = "AXT2"
        handle.attrs["max"] = 1.0
        handle.attrs["norm"] = 2.0
        handle.attrs["patient_id"] = "0f5e0c2c"
        handle.attrs["ismrmrd_header"] = FASTMRI_STYLE_HEADER
    assert detect_format(path) == "fastmri"
    scan = read_scan(path)
    np.testing.assert_array_equal(scan.kspace, kspace)
    assert scan.is_fully_sampled and scan.acceleration == 1
    assert scan.geometry.fov_mm == (440.0, 220.0, 7.5)
    assert scan.geometry.resolution_mm(scan.matrix) == (13.75, 220.0 / 24)
    assert scan.geometry.slice_thickness_mm == 7.5
    assert scan.protocol == "AX T2"
    assert scan.identifiers.study_time == "162103"


def test_fastmri_test_file_with_float_mask_and_sampling_attributes(tmp_path):
    path = tmp_path / "file_brain_test.h5"
    mask = equispaced_mask(24, 4, 8)
    kspace = random_kspace((3, 4, 32, 24)) * mask
    with h5py.File(path, "w") as handle:
        handle["kspace"] = kspace
        handle["mask"] = mask.astype(np.float32)
        handle.attrs["acceleration"] = 4
        handle.attrs["num_low_frequency"] = 8
        handle.attrs["acquisition"] = "AXFLAIR"
    scan = read_scan(path)
    np.testing.assert_array_equal(scan.sampled, mask)
    assert (scan.acceleration, scan.acs.start, scan.acs.stop) == (4, 8, 16)
    assert scan.protocol == "AXFLAIR"  # no header: the acquisition attribute names it


def test_fastmri_file_without_mask_infers_sampling_from_zero_lines(tmp_path):
    path = tmp_path / "retro.h5"
    mask = equispaced_mask(24, 2, 6)
    with h5py.File(path, "w") as handle:
        handle["kspace"] = random_kspace((1, 4, 32, 24)) * mask
    scan = read_scan(path)
    np.testing.assert_array_equal(scan.sampled, mask)
    assert scan.acceleration == 2 and scan.acs.lines >= 6


def test_compressed_fastmri_file_and_content_based_detection(tmp_path):
    path = tmp_path / "compressed.dat"  # the name says nothing; the content decides
    mask = equispaced_mask(24, 4, 8)
    kspace = random_kspace((2, 4, 32, 24)) * mask
    with h5py.File(path, "w") as handle:
        handle.create_dataset("kspace", data=kspace, compression="gzip", chunks=(1, 1, 32, 24))
    assert detect_format(path) == "fastmri"
    np.testing.assert_array_equal(read_scan(path).kspace, kspace)
