"""Searches over compression settings; each returns a plan (data you can save and apply).

Sub-packages: :mod:`vitcompress.methods.flbq` (F-LBQ bit allocation, METHODS.md §2),
:mod:`vitcompress.methods.mixaq` (MixA-Q ratio sampling and equivalent bits, §4),
:mod:`vitcompress.methods.evolq` (Evol-Q evolutionary search of quantization scales, §1).
"""
