#!/usr/bin/env bash
# The first-contact GPU suite: every figure as JSON under OUT, on data generated here (no downloads).
#   bash benchmarks/gpu_suite.sh OUT                     # a GPU machine: at most about 8 minutes on one H100
#   bash benchmarks/gpu_suite.sh OUT --device cpu --tiny # the CPU check CI runs (tiny models and data)
# Parts are independent: each has its own time limit, writes OUT/<part>.json or OUT/<part>.error,
# and a failure of one still leaves the others. OUT/summary.json lists them; the exit code is 1 if any failed.
#   train_step  backbone+linear, DSRB cheap, DSRB naive, SSGRL, DSRB --save-memory at C = 80 and 200,
#               batch 32, bf16 on the GPU: seconds/step, images/s, peak memory (max_memory_allocated)
#   gpu_feed    640x480 JPEG shards: the loader alone vs the step alone vs the loop (14 workers)
#   dsrb_run    two epochs of DSRB with blending from epoch 0: finite, falling loss; peak memory
set -uo pipefail
out=${1:?usage: gpu_suite.sh OUT [--device cuda|cpu] [--tiny]}
shift
device=cuda
tiny=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --tiny) tiny=1; shift ;;
    *) echo "gpu_suite.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-$here/../.venv/bin/python}
[ -x "$py" ] || py=python3
mkdir -p "$out"
if [ "$device" = cuda ] && ! "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_suite.sh: --device cuda but torch sees no GPU here (use --device cpu --tiny for the CPU check)" >&2
  exit 2
fi
failed=()
part() {  # part NAME SECONDS COMMAND...: run one part under its time limit, keep its JSON or its error
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  if timeout "$limit" "$@" > "$out/$name.stdout" 2> "$out/$name.stderr"; then
    "$py" -c 'import json,sys; d=sys.stdin.read(); json.loads(d[d.index("{"):]); print(d[d.index("{"):], end="")' \
      < "$out/$name.stdout" > "$out/$name.json" 2> "$out/$name.error" && rm -f "$out/$name.error" \
      || failed+=("$name")
  else
    local rc=$?
    { echo "exit $rc after $((SECONDS - t0)) s$([ $rc = 124 ] && echo ": over its $limit s limit")"
      tail -n 30 "$out/$name.stderr"; tail -c 2000 "$out/$name.stdout"; } > "$out/$name.error"
    failed+=("$name")
  fi
  echo "$name: $([ -f "$out/$name.json" ] && echo ok || echo FAILED) in $((SECONDS - t0)) s" >&2
}
if [ $tiny = 1 ]; then
  part train_step 240 "$py" "$here/train_step.py" --device "$device" --backbone resnet18 --size 64 --batch 4 --classes 10 --steps 1
  part gpu_feed 240 "$py" "$here/gpu_feed.py" --device "$device" --backbone tiny --images 48 --batch 8 --steps 3 --workers 1 --size 64
  part dsrb_run 240 "$py" "$here/dsrb_run.py" --device "$device" --tiny
else
  part train_step 210 "$py" "$here/train_step.py" --device "$device" --batch 32 --classes 80,200 --steps 3
  part gpu_feed 140 "$py" "$here/gpu_feed.py" --device "$device" --batch 32 --workers 14 --images 2000 --steps 40
  part dsrb_run 110 "$py" "$here/dsrb_run.py" --device "$device"
fi
"$py" - "$out" "${failed[@]+"${failed[@]}"}" <<'PY'
import json, sys
from pathlib import Path
out, failed = Path(sys.argv[1]), sys.argv[2:]
parts = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.stem != "summary"}
(out / "summary.json").write_text(json.dumps({"ok": not failed, "failed": failed, "parts": sorted(parts)}, indent=2) + "\n")
PY
[ ${#failed[@]} -eq 0 ]
