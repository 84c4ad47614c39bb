"""G.711 µ-law (``audio/pcmu``), pure numpy: the encoder kioskd's lighter uplink uses and the decoder the
simulator and the tests use.

The standard companding of ITU-T G.711 as in the reference C implementation (Sun's ``g711.c``): bias 0x84,
clip at 32635, the segment (exponent) from the highest set bit, four mantissa bits, every bit inverted. One
byte a sample at 8 kHz. ``audioop`` did this before Python 3.13 removed it.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from kioskd.core.pcm import Pcm

#: G.711's own rate
ULAW_RATE_HZ: Final = 8000
BIAS: Final = 0x84
CLIP: Final = 32635
#: segment of a biased magnitude by its top 8 bits (magnitude >> 7): the position of their highest set bit
_SEGMENT: Final = np.array([0] + [int(np.log2(i)) for i in range(1, 256)], dtype=np.int32)


def ulaw_encode(pcm: Pcm) -> npt.NDArray[np.uint8]:
    """PCM16 samples → µ-law bytes, one a sample."""
    x = np.asarray(pcm, dtype=np.int32)
    sign = np.where(x < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(x), CLIP) + BIAS
    segment = _SEGMENT[magnitude >> 7]
    mantissa = (magnitude >> (segment + 3)) & 0x0F
    return (~(sign | (segment << 4) | mantissa) & 0xFF).astype(np.uint8)


def ulaw_decode(data: bytes | npt.NDArray[np.uint8]) -> Pcm:
    """µ-law bytes → PCM16 samples (each at the middle of its quantisation step)."""
    u = ~np.frombuffer(bytes(data), dtype=np.uint8).astype(np.int32) & 0xFF
    segment = (u >> 4) & 0x07
    magnitude = (((u & 0x0F) << 3) + BIAS << segment) - BIAS
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)
