"""Features: torch front ends (`frontends`) and the cached, sharded feature store (`store`).

The store is imported lazily so that using a front end does not import Ray.
"""
from raytag.features.frontends import build_frontend, frontend_shape

__all__ = ["build_frontend", "frontend_shape", "build_feature_store", "FeatureStore"]


def __getattr__(name):
    if name in ("build_feature_store", "FeatureStore"):
        from raytag.features import store

        return getattr(store, name)
    raise AttributeError(f"module 'raytag.features' has no attribute {name!r}")
