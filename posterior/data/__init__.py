"""Small offline image data sets for training and testing diffusion priors.

Nothing here downloads anything: ``digits`` uses scikit-learn's bundled 8x8 digits, ``shepp_logan``
scikit-image's bundled CT phantom, and ``phantoms`` is generated procedurally. The first two need the
``data`` extra (``pip install 'posterior[data]'``).
"""

from posterior.data.ct_phantoms import phantoms, shepp_logan
from posterior.data.sklearn_digits import digits, random_shift

__all__ = ["digits", "phantoms", "random_shift", "shepp_logan"]
