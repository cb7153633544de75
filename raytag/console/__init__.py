"""How results are shown on a terminal: the commands behind `raytag` (raytag.cli parses
the options; each command here calls the library, then prints what it returned) and the
rich tables they and the demo print. One module per command family, so that a command
imports only its own machinery (`raytag score` does not load torch or Ray).

Library modules below return results and print nothing but progress during long work
(the feature bar, the sweep's trial lines, the tagging bar, the ensemble's candidate
line), switched by their `progress` flag or `console` argument."""
