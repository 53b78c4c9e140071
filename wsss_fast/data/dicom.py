"""Reading chest radiographs from DICOM with pydicom.

The pixel pipeline follows DICOM PS3.3 C.11 (as the SIIM-ACR images need and as other
sites' exports may): stored values -> Modality LUT / rescale slope & intercept
(``pydicom.pixels.apply_modality_lut``) -> VOI LUT or window centre/width
(``pydicom.pixels.apply_voi_lut``) -> 8-bit display values, inverted for ``MONOCHROME1``
(where larger values are darker). 8- and 16-bit data, signed or not, are handled.
The SIIM-ACR files themselves are 8-bit MONOCHROME2 JPEG-baseline, decoded through Pillow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["read_dicom", "DicomReadError"]


class DicomReadError(RuntimeError):
    """A DICOM file could not be read or decoded (the message names the file)."""


def _voi_output_range(ds) -> tuple[float, float] | None:
    """The value range ``apply_voi_lut`` maps into, or None when no VOI transform exists."""
    if ds.get("VOILUTSequence"):
        depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2 ** depth - 1)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        bits = int(ds.BitsStored)
        if ds.get("ModalityLUTSequence"):
            depth = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
            return 0.0, float(2 ** depth - 1)
        if int(ds.PixelRepresentation) == 0:
            lo, hi = 0.0, float(2 ** bits - 1)
        else:
            lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
        if ds.get("RescaleSlope", None) is not None and ds.get("RescaleIntercept", None) is not None:
            s, b = float(ds.RescaleSlope), float(ds.RescaleIntercept)
            lo, hi = sorted((lo * s + b, hi * s + b))
        return lo, hi
    return None


def read_dicom(path: str | Path, apply_voi: bool = True) -> np.ndarray:
    """Read one single-frame grayscale DICOM image as 8-bit display values.

    Args:
        path: the ``.dcm`` file.
        apply_voi: apply the file's VOI LUT / window (when it has one).

    Returns:
        uint8 [H, W]; 0 = black (air), 255 = white (bone), whatever the file's
        photometric interpretation.

    Raises:
        FileNotFoundError: the file does not exist.
        DicomReadError: the file is not valid DICOM, has no pixel data, cannot be
            decoded, or is not a single-frame grayscale image.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"DICOM file not found: {path}")
    try:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for broken files
        raise DicomReadError(f"cannot read DICOM file {path}: {type(exc).__name__}: {exc}") from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if int(ds.get("SamplesPerPixel", 1)) != 1 or arr.ndim != 2:
        raise DicomReadError(f"{path}: expected a single-frame grayscale image, got "
                             f"{photometric} with pixel array shape {arr.shape}")
    try:
        bits_stored = int(ds.get("BitsStored", arr.dtype.itemsize * 8))
        has_rescale = ds.get("RescaleSlope", None) is not None or bool(ds.get("ModalityLUTSequence"))
        x = apply_modality_lut(arr, ds)
        rng = None
        if apply_voi:
            rng = _voi_output_range(ds)
            if rng is not None:
                if ds.get("VOILUTSequence") and not np.issubdtype(x.dtype, np.integer):
                    x = np.round(x).astype(np.int64)
                x = apply_voi_lut(x, ds)
        if rng is None:
            if bits_stored <= 8 and not has_rescale and int(ds.get("PixelRepresentation", 0)) == 0:
                rng = (0.0, float(2 ** bits_stored - 1))
            else:  # no window given: stretch the image's own range
                rng = (float(np.min(x)), float(np.max(x)))
    except Exception as exc:
        raise DicomReadError(f"{path}: cannot apply modality/VOI transforms: {exc}") from exc
    lo, hi = rng
    x = (x.astype(np.float64) - lo) / max(hi - lo, 1e-12)
    out = np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return out
