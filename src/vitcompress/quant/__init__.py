"""Quantization primitives: quantizers (uniform, log2, PTF), observers, bias correction (METHODS §0)."""

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
    "ChannelHistogramObserver", "HistogramObserver", "Log2Quantizer", "PTFQuantizer", "Quantizer", "RowHistogram",
    "UniformQuantizer", "correct_bias", "fake_quant", "grad_scale", "log2_fake_quant", "make_quantizer",
    "ptf_fake_quant", "qparams_from_range", "qrange", "qrange_tensor", "round_ste", "search_range", "tensor_range",
]
