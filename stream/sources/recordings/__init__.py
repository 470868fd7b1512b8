"""Recordings of a detector stream: the file format, the recorder, and the replay that sends a
recording (or a beamline file) as a detector would."""
