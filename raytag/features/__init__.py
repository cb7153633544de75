"""Features: torch front ends (`frontends`) and the cached, sharded feature store (`store`).

The store imports Ray only when it builds, so using a front end does not import Ray.
"""
from raytag.features.frontends import build_frontend, frontend_shape
from raytag.features.store import FeatureStore, build_feature_store

__all__ = ["build_frontend", "frontend_shape", "build_feature_store", "FeatureStore"]
