"""Quantization primitives: quantizers (uniform, log2, PTF, log√2), range observers, bias correction.

The log2 and power-of-two-factor quantizers follow FQ-ViT (Lin et al., IJCAI 2022, arXiv:2111.13824);
learnable scales follow LSQ (Esser et al., ICLR 2020, arXiv:1902.08153); OMSE ranges follow Choukroun
et al. (ICCV Workshops 2019, arXiv:1902.06822); bias correction follows Banner et al. (NeurIPS 2019,
arXiv:1810.05723). Full titles in the modules and in ``docs/quantization.md``.
"""

from vitcompress.quant.bias_correction import correct_bias
from vitcompress.quant.functional import (
    fake_quant,
    grad_scale,
    log2_fake_quant,
    ptf_fake_quant,
    qrange,
    qrange_tensor,
    round_ste,
)
from vitcompress.quant.logsqrt2 import LogSqrt2Quantizer, log_sqrt2_fake_quant
from vitcompress.quant.observers import (
    ChannelHistogramObserver,
    HistogramObserver,
    RowHistogram,
    qparams_from_range,
    search_range,
    tensor_range,
)
from vitcompress.quant.quantizer import Log2Quantizer, PTFQuantizer, Quantizer, UniformQuantizer, make_quantizer

__all__ = [
    "ChannelHistogramObserver",
    "HistogramObserver",
    "Log2Quantizer",
    "LogSqrt2Quantizer",
    "PTFQuantizer",
    "Quantizer",
    "RowHistogram",
    "UniformQuantizer",
    "correct_bias",
    "fake_quant",
    "grad_scale",
    "log2_fake_quant",
    "log_sqrt2_fake_quant",
    "make_quantizer",
    "ptf_fake_quant",
    "qparams_from_range",
    "qrange",
    "qrange_tensor",
    "round_ste",
    "search_range",
    "tensor_range",
]
