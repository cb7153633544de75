"""--feature-cache as `raytag train`, `tune` and `distill` read it, before any work."""
from __future__ import annotations

from typing import Optional

from raytag.features.store import feature_cache_folder


def feature_cache_option(option: Optional[str]) -> Optional[str]:
    """The folder --feature-cache names, checked and created here (feature_cache_folder), or
    None when it is left out: each node then uses its own default (its $RAYTAG_CACHE, else
    ~/.cache/raytag/features there), which this machine cannot resolve for it."""
    return feature_cache_folder(option) if option is not None else None
