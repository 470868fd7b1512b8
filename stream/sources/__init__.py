"""Where frames and scans come from, turned into :mod:`sxdm_stream.messages`.

* :mod:`.dectris`: the DECTRIS SIMPLON stream (v1 and v2 codec, compression, a sender that
  acts as a detector);
* :mod:`.recordings`: a stream recorded message by message, recorded and replayed;
* :mod:`.files`: scans a beamline already wrote (ESRF ID01 BLISS files, XSOCS masters).

The bluesky source lives in :mod:`sxdm_stream.plugins.bluesky` (it needs bluesky).

What it may import: :mod:`sxdm_stream.core` (to describe scans and geometry),
:mod:`sxdm_stream.errors`, :mod:`sxdm_stream.messages`, :mod:`sxdm_stream.config` and itself.
Never physics beyond describing a scan; never the pipeline, sinks, runtime or CLI. Checked by
tests/test_layers.py.
"""
