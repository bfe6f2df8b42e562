"""Small offline image data sets for training and testing diffusion priors.

Nothing here downloads anything: ``digits`` uses scikit-learn's bundled 8x8 digits, ``shepp_logan``
scikit-image's bundled CT phantom, and ``phantoms`` and the ultrasound frames and patches are
generated procedurally. The first two need the ``data`` extra (``pip install 'posterior[data]'``).
"""

from posterior.data.ct_phantoms import (
    held_out_phantoms,
    phantom_volumes,
    phantoms,
    shepp_logan,
    shepp_logan_volume,
)
from posterior.data.sklearn_digits import digits
from posterior.data.ultrasound import (
    UltrasoundConfig,
    bmode,
    contrast_db,
    envelope,
    gcnr,
    ks_statistic,
    scan_convert,
    ultrasound_frames,
    ultrasound_patches,
)

__all__ = [
    "UltrasoundConfig",
    "bmode",
    "contrast_db",
    "digits",
    "envelope",
    "gcnr",
    "held_out_phantoms",
    "ks_statistic",
    "phantom_volumes",
    "phantoms",
    "scan_convert",
    "shepp_logan",
    "shepp_logan_volume",
    "ultrasound_frames",
    "ultrasound_patches",
]
