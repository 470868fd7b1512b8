"""Frame simulator: SXDM sample physics, detector models and scan generation."""
