"""CONFIG_PROFILE: which storage SOP classes the SCP accepts."""

from __future__ import annotations

from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    EnhancedXRFImageStorage,
    SecondaryCaptureImageStorage,
    XRayRadiofluoroscopicImageStorage,
)
from pynetdicom.presentation import AllStoragePresentationContexts

_DEFAULT = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)
_SC = (SecondaryCaptureImageStorage,)
_RF = (XRayRadiofluoroscopicImageStorage, EnhancedXRFImageStorage)
_ALL = tuple(cx.abstract_syntax for cx in AllStoragePresentationContexts if cx.abstract_syntax)

PROFILES: dict[str, tuple[str, ...]] = {
    "Default": tuple(str(uid) for uid in _DEFAULT),
    "WithSC": tuple(str(uid) for uid in _DEFAULT + _SC),
    "WithRF": tuple(str(uid) for uid in _DEFAULT + _RF),
    "WithSCRF": tuple(str(uid) for uid in _DEFAULT + _SC + _RF),
    "All": tuple(str(uid) for uid in _ALL),
}
