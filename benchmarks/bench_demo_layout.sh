#!/usr/bin/env bash
# The demo sweep's two layouts on 2 cores, side by side (results/benchmarks/speed.md, "The demo's
# sweep"): search_spaces/demo.yaml as shipped (two 1-worker trials at once) against the old layout
# (one trial at a time on 2 DDP workers x 0.5 CPU), on the same demo set with its features built
# beforehand, one after the other. Run it alone: it is a timing.
#   bash benchmarks/bench_demo_layout.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
D=${1:-/tmp/raytag_demo_layout}
rm -rf "$D"; mkdir -p "$D"
"$PY" - "$D" <<'PYEOF'
import sys
from pathlib import Path

import yaml

from raytag.data.demo import make_demo_dataset
from raytag.search.space import load_space
from raytag.training.runner import prepare_data

work = Path(sys.argv[1])
make_demo_dataset(work / "data")
prepare_data(load_space("search_spaces/demo.yaml").base_config(), work / "data", None, progress=False)
doc = yaml.safe_load(Path("search_spaces/demo.yaml").read_text())
doc["search"]["max_concurrent_trials"] = 1
doc["resources"].update(num_workers=2, cpus_per_worker=0.5)
(work / "old_layout.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
PYEOF
for v in old:"$D/old_layout.yaml" shipped:search_spaces/demo.yaml; do
  n=${v%%:*}; f=${v#*:}
  echo "== $n start $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  s=$(date +%s)
  "$PY" -m raytag.cli tune --space "$f" --data "$D/data" --storage "$D/res" --name "$n" 2>&1 | grep -v "━━" | tail -12
  echo "== $n $(( $(date +%s) - s )) s, load $(cut -d' ' -f1-3 /proc/loadavg)"
done
