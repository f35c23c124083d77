"""Searches over compression settings; each returns a plan (data you can save and apply).

Sub-packages: :mod:`vitcompress.search.bitalloc` (F-LBQ bit allocation, METHODS.md §2),
:mod:`vitcompress.search.mixaq` (MixA-Q ratio sampling and equivalent bits, §4),
:mod:`vitcompress.search.evolq` (Evol-Q evolutionary search of quantization scales, §1).
"""
