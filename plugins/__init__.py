"""Integrations of sxdm-stream with acquisition control (bluesky) and the live viewer."""
