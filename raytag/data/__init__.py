"""Dataset folders, audio decoding, labels and the synthetic demo set."""
from raytag.data.audio import audio_info, load_audio
from raytag.data.labels import labels_to_matrix, matrix_to_labels, parse_label_field
from raytag.data.layouts import Dataset, load_dataset

__all__ = [
    "Dataset",
    "audio_info",
    "labels_to_matrix",
    "load_audio",
    "load_dataset",
    "matrix_to_labels",
    "parse_label_field",
]
