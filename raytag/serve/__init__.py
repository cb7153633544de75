"""Serving an ensemble artifact over HTTP with Ray Serve (`raytag serve`)."""
