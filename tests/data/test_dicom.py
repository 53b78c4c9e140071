"""read_dicom's pixel pipeline (DICOM PS3.3 C.11) on files written here with known values:
a VOI window on unsigned and signed data, rounding to 8 bits, and non-grey images refused."""

from __future__ import annotations

import numpy as np
import pytest

from wsss_fast.data.dicom import DicomReadError, read_dicom


def _write(path, pixels: np.ndarray, bits_stored: int, **attrs) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uid = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, uid
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1 if pixels.ndim == 2 else pixels.shape[2]
    ds.PhotometricInterpretation = "MONOCHROME2" if pixels.ndim == 2 else "RGB"
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(np.issubdtype(pixels.dtype, np.signedinteger))
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.PixelData = np.ascontiguousarray(pixels.astype(pixels.dtype.newbyteorder("<"))).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, the default LINEAR function, onto 0..255 (rounded)."""
    x = x.astype(np.float64)
    f = (x - (center - 0.5)) / (width - 1) + 0.5
    f = np.where(x <= center - 0.5 - (width - 1) / 2, 0.0, np.where(x > center - 0.5 + (width - 1) / 2, 1.0, f))
    return np.round(f * 255).astype(np.uint8)


def test_window_of_unsigned_12_bit_data(tmp_path):
    raw = np.array([[0, 1000, 1536, 1700, 2048, 2300, 2560, 3000, 4095]], np.uint16)
    _write(tmp_path / "a.dcm", raw, 12, WindowCenter=2048, WindowWidth=1024)
    want = _linear_window(raw, 2048, 1024)
    assert want[0, 3] == 41  # 40.88: rounded, not cut
    np.testing.assert_array_equal(read_dicom(tmp_path / "a.dcm"), want)
    # without the window: the image's own range, stretched
    stretched = np.round(raw.astype(np.float64) / 4095 * 255).astype(np.uint8)
    np.testing.assert_array_equal(read_dicom(tmp_path / "a.dcm", apply_voi=False), stretched)


def test_window_of_signed_data(tmp_path):
    raw = np.array([[-2048, -300, -200, -37, 0, 55, 200, 2047]], np.int16)
    _write(tmp_path / "s.dcm", raw, 12, WindowCenter=0, WindowWidth=400)
    want = _linear_window(raw, 0, 400)
    assert want.tolist() == [[0, 0, 0, 104, 128, 163, 255, 255]]
    np.testing.assert_array_equal(read_dicom(tmp_path / "s.dcm"), want)


def test_a_colour_image_is_refused(tmp_path):
    _write(tmp_path / "rgb.dcm", np.zeros((2, 2, 3), np.uint8), 8)
    with pytest.raises(DicomReadError, match="single-frame grayscale.*rgb.dcm|rgb.dcm.*single-frame grayscale"):
        read_dicom(tmp_path / "rgb.dcm")


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.dcm"):
        read_dicom(tmp_path / "nothere.dcm")
