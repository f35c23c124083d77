"""Quantization primitives: quantizers (uniform, log2, PTF), observers, bias correction."""

from vitcompress.quant.bias_correction import correct_bias
from vitcompress.quant.functional import fake_quant, log2_fake_quant, ptf_fake_quant, qrange, round_ste
from vitcompress.quant.quantizer import Log2Quantizer, PTFQuantizer, Quantizer, UniformQuantizer, make_quantizer

__all__ = [
    "Log2Quantizer", "PTFQuantizer", "Quantizer", "UniformQuantizer", "correct_bias", "fake_quant",
    "log2_fake_quant", "make_quantizer", "ptf_fake_quant", "qrange", "round_ste",
]
