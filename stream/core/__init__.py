"""Pure computation on one scan: geometry, scan layout, q grid, numba kernels, accumulator, maps.

What it holds: the diffractometer geometry (q of every detector pixel), the scan (which frame
is which map pixel and rocking angle), the q-space grid and its memory budget, the kernels
and the additive accumulator (create / append / combine / finalize), the maps derived from
the sums, and q-space ROIs.

What it may import: numpy, numba, scipy, and in this package only :mod:`sxdm_stream.errors`,
:mod:`sxdm_stream.messages` and itself. No I/O: no files, sockets, threads or logging of
results. Checked by tests/test_layers.py.
"""
