"""User-facing errors: each says what was wrong and what to do. The CLI prints them
without a traceback and exits with status 2."""


class RaytagError(Exception):
    """Base of every error raytag expects a user to act on."""


class DatasetError(RaytagError):
    """The dataset folder cannot be used as a whole (not a single bad clip)."""


class AudioDecodeError(RaytagError):
    """One audio file cannot be used; carries the file and the reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ArtifactError(RaytagError):
    """An ensemble artifact is incomplete, tampered with or of another version."""


class StorageError(RaytagError):
    """A storage path or URI cannot be used (for example local storage on a multi-node cluster)."""


class StorageFault(StorageError):
    """The storage failed while a run wrote to it (a full disk, lost write access): not the
    run's own failure, so the run continues from its last checkpoint once it is fixed."""


class ScoringError(RaytagError):
    """A truth or submission file cannot be scored; the message says which and why."""


class TruthError(ScoringError):
    """A truth file (true labels, read only to score predictions against) cannot be used."""


class CheckpointError(RaytagError):
    """A run's checkpoint cannot be saved or loaded safely (a pickle, a missing or altered file)."""


class TrainingDiverged(RaytagError, FloatingPointError):
    """The training loss became NaN or infinite. A retry replays the same seeded epochs and
    diverges again, so it is raised at once (a FloatingPointError too, for older callers)."""


class ClusterError(RaytagError):
    """The Ray cluster named by RAY_ADDRESS cannot be joined (unreachable, refused, no token)."""


def os_error_text(err: OSError) -> str:
    """An OSError as "<file>: <reason>" for a message (pyarrow's errors carry the file in
    their text instead, and are shown as they are)."""
    if err.filename is not None and err.strerror:
        other = f" -> {err.filename2}" if err.filename2 is not None else ""
        return f"{err.filename}{other}: {err.strerror}"
    return str(err)
