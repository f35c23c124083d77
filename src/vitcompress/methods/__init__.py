"""The compression methods, one folder each; :mod:`vitcompress.methods.registry` maps a config type to its method.

- :mod:`vitcompress.methods.ptq`: a :class:`~vitcompress.config.Recipe`, post-training quantization.
- :mod:`vitcompress.methods.evolq`: Evol-Q, evolutionary search of quantization scales (Frumkin, Gope,
  Marculescu, ICCV 2023, arXiv:2308.10814).
- :mod:`vitcompress.methods.flbq`: F-LBQ, bit allocation per layer or channel group under a bit budget.
- :mod:`vitcompress.methods.gpusq`: GPUSQ-ViT, 2:4 / 4:8 sparsity with distillation, then sparse QAT (Yu,
  Chen, Gan, Fan, CVPR 2023, arXiv:2305.10727).
- :mod:`vitcompress.methods.mixaq`: MixA-Q, window-level mixed-precision activations for Swin.

Each method's package registers its handler when imported; nothing below this package imports it.
"""
