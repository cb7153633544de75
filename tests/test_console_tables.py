"""The stage table printed at 80 columns (a piped `raytag train`): no number is cut."""
from __future__ import annotations

import numpy as np
import pandas as pd
from rich.console import Console

from raytag.console.tables import stage_table

NAN = np.nan
STAGES_2018 = pd.DataFrame({  # every column, MAP@3 too: the widest table
    "stage": ["warmup", "finetune", "pseudo_round_1"], "folds": [5.0, 5.0, 5.0],
    "cv_lwlrap": [0.61234, 0.65, 0.66], "cv_map3": [0.5876, 0.61, 0.62], "test_lwlrap": [0.6345, 0.66, 0.67],
    "n_accepted": [NAN, 1.0, 1234.4], "filter_precision": [NAN, 0.91, 0.9], "filter_recall": [NAN, 0.8, 0.81],
    "n_pseudo": [NAN, 0.0, 356.0],
})


def test_the_stage_table_at_80_columns_cuts_no_number_and_shows_counts_as_whole_numbers():
    console = Console(width=80, record=True)
    console.print(stage_table(STAGES_2018))
    text = console.export_text()
    assert "…" not in text
    assert all(len(line) <= 80 for line in text.splitlines())
    for shown in ("0.634", "0.588", "0.910", "1234", "356"):
        assert shown in text
    assert "1.000" not in text and "0.000" not in text  # counts: 1 and 0, not floats
