"""Search: space YAML -> Optuna define-by-run space, Ray Tune sweep, leaderboard, report.

`load_space(path)` and `run_sweep(space_path, data, storage, name, samples, resume,
scheduler) -> SweepResult` are the entry points; imports are lazy (Ray Tune is heavy).
"""
from raytag.search.space import SearchSpace, SpaceError, load_space, parse_space

__all__ = ["SearchSpace", "SpaceError", "SweepResult", "load_space", "parse_space", "run_sweep", "tune_command"]


def __getattr__(name):
    if name in ("run_sweep", "tune_command", "SweepResult"):
        from raytag.search import tuner

        return getattr(tuner, name)
    raise AttributeError(name)
