"""sxdm-stream: live processing of Scanning X-ray Diffraction Microscopy data.

The core package (``stream/`` in the source tree) holds the pure computation (geometry,
kernels, accumulation, map derivation), the outputs and the pipeline that joins them.
Integrations live in :mod:`sxdm_stream.plugins`, the frame simulator in
:mod:`sxdm_stream.simulators`.
"""

__version__ = "0.1.0"
