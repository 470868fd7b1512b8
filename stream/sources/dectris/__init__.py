"""The DECTRIS SIMPLON stream: the message codec (v1 and v2), image compression, and a sender
that does what a detector's DCU does on its PUSH socket."""
