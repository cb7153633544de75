"""raytag: multi-label audio tagging trained on noisy labels, searched and ensembled on Ray."""

__version__ = "0.1.0"
