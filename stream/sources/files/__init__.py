"""Scans a beamline already wrote: ESRF ID01 BLISS scan sets, XSOCS master files, read frame by
frame (:mod:`.filescan`), and the one opener of all of them (:mod:`.open`)."""
