"""A DICOM file written again in another transfer syntax, for a PACS that does not take the
object's own one (which syntax is pacsor.domain.negotiation's decision).

Between uncompressed syntaxes pydicom re-encodes the elements: nothing is lost. A compressed
object is decompressed with the pylibjpeg decoders (JPEG, JPEG-LS, JPEG 2000) or pydicom's own
(RLE); pydicom then sets the attributes that describe the decoded pixels (photometric
interpretation, planar configuration). The SOP Instance UID stays: a change of transfer syntax
is not a new instance (PS3.5 §10). An object decompressed from a lossy syntax keeps its Lossy
Image Compression attributes.
"""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.uid import UID

from pacsor.domain.negotiation import needs_decompression
from pacsor.errors import InvalidInput


class ConversionError(InvalidInput):
    """The object cannot be written in the syntax asked for (no decoder, corrupt pixel data)."""


def convert_file(source: Path, target: Path, syntax: str) -> None:
    """Write `source` to `target` in `syntax` (an uncompressed one, or the file's own)."""
    try:
        ds = dcmread(source)
        own = str(ds.file_meta.TransferSyntaxUID)
        if needs_decompression(own, syntax) and "PixelData" in ds:
            ds.decompress(generate_instance_uid=False)
        ds.file_meta.TransferSyntaxUID = UID(syntax)
        ds.save_as(target, enforce_file_format=True)
    except (ValueError, RuntimeError, NotImplementedError, AttributeError, KeyError) as err:
        # pydicom reports a missing decoder or undecodable pixels as one of these.
        raise ConversionError(f"cannot convert to {UID(syntax).name}: {err}") from err
