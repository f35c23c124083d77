"""Block reconstruction: AdaRound weight rounding and LSQ step sizes learned block by block (BRECQ, QDrop).

Used by :func:`vitcompress.quantize.quantize_` when a recipe has a ``reconstruction`` field; the building
block is :func:`reconstruct_`.
"""

from vitcompress.recon.reconstruct import ReconResult, reconstruct_
from vitcompress.recon.state import STATE_FILE

__all__ = ["STATE_FILE", "ReconResult", "reconstruct_"]
