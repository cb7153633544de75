"""Search: space YAML -> Optuna define-by-run space, Ray Tune sweep, leaderboard, report.

`raytag.search.space.load_space(path)` reads a space; `raytag.search.tuner.run_sweep(...)
-> SweepResult` runs a sweep. The package exports only the space, so that reading a
space does not import Ray Tune (import raytag.search.tuner for the sweep).
"""
from raytag.search.space import SearchSpace, SpaceError, load_space, parse_space

__all__ = ["SearchSpace", "SpaceError", "load_space", "parse_space"]
