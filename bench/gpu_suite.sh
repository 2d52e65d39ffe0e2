#!/usr/bin/env bash
# The numbers that need a CUDA GPU, in one command (issue #15), within an 8-minute budget:
#
#   bench/gpu_suite.sh                                   # on a CUDA machine
#   bench/gpu_suite.sh --official /tmp/3d_head_stylization --panohead /tmp/PanoHead   # + the official code
#   bench/gpu_suite.sh --dry-run                         # anywhere: what it would run, exits 0
#
# It prints: full-size s/iteration (fp16) and peak VRAM of likelihood distillation with every stage on
# (random weights at the real sizes: the PanoHead preset + SD-1.5-sized UNet/VAE/text encoder/2 ControlNets,
# as bench/bench_stylize.py --full), the same with attention + VAE slicing (the 12 GB configuration, next to
# bench/memory_budget.py's estimate), the official training step on the same models when --official and
# --panohead are given (bench/compare_official.py --size full), 512³ mesh extraction of the PanoHead-size
# generator, the embedded demo's wall time, and a 200-step real-size stylization's throughput.
#
# On a machine without CUDA a real run stops at once with exit status 3 and says why; nothing is measured
# on the CPU by mistake. Options:
#   --python PY           interpreter for the engine (default .venv/bin/python, else python3)
#   --official-python PY  interpreter with the official code's dependencies (default: --python)
#   --out DIR             where the JSON results and the demo go (default out/gpu_suite)
#   --budget-seconds N    the whole suite's time budget (default 480); each item gets its share
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
cd "$repo"

dry_run=0
official=""
panohead=""
python=""
official_python=""
out="out/gpu_suite"
budget=480

die() { echo "gpu_suite: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) dry_run=1; shift ;;
        --official) [[ $# -ge 2 ]] || die "--official needs a path"; official="$2"; shift 2 ;;
        --panohead) [[ $# -ge 2 ]] || die "--panohead needs a path"; panohead="$2"; shift 2 ;;
        --python) [[ $# -ge 2 ]] || die "--python needs an interpreter"; python="$2"; shift 2 ;;
        --official-python) [[ $# -ge 2 ]] || die "--official-python needs an interpreter"; official_python="$2"; shift 2 ;;
        --out) [[ $# -ge 2 ]] || die "--out needs a folder"; out="$2"; shift 2 ;;
        --budget-seconds) [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || die "--budget-seconds needs a whole number"; budget="$2"; shift 2 ;;
        -h|--help) sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
if [[ -n "$official" && -z "$panohead" ]] || [[ -z "$official" && -n "$panohead" ]]; then
    die "--official and --panohead go together (the official code imports PanoHead's camera_utils.py and legacy.py)"
fi
if [[ -z "$python" ]]; then
    if [[ -x .venv/bin/python ]]; then python=".venv/bin/python"; else python="python3"; fi
fi
official_python="${official_python:-$python}"

# name | share of the budget (%) | command
items=(
    "LD, full size, all stages, fp16|14|$python bench/bench_stylize.py --full --device cuda --precision fp16 --steps 6 --warmup 2 --json $out/ld_full.json"
    "LD, full size, fp16 + attention/VAE slicing (the 12 GB configuration)|12|$python bench/bench_stylize.py --full --device cuda --precision fp16 --steps 4 --warmup 1 --attention-slicing --vae-slicing --json $out/ld_full_sliced.json"
)
if [[ -n "$official" ]]; then
    items+=("official train_LD.py step vs ours, full size, fp16|24|$official_python bench/compare_official.py --official $official --panohead $panohead --device cuda --size full --steps 4 --warmup 1 --repeats 1 --json $out/official.json")
fi
items+=(
    "mesh extraction 512³, PanoHead-size generator|8|$python bench/bench_generator.py --device cuda --forward-presets panohead --mesh-preset panohead --mesh-resolutions 512 --repeats 1"
    "engine demo (embedded pack, end to end)|12|$python -m engine demo --device cuda --out $out/demo"
    "200-step real-size stylization (throughput)|30|$python bench/bench_stylize.py --full --device cuda --precision fp16 --steps 200 --warmup 5 --json $out/ld_200.json"
)

for script in bench/bench_stylize.py bench/bench_generator.py bench/compare_official.py bench/memory_budget.py; do
    [[ -f "$script" ]] || die "$script is missing from $repo"
done

if [[ $dry_run -eq 1 ]]; then
    echo "gpu_suite (dry run): would run, in ${budget} s at most:"
    n=0
    for item in "${items[@]}"; do
        IFS='|' read -r name share command <<< "$item"
        n=$((n + 1))
        echo "  $n. $name  [≤ $((budget * share / 100)) s]"
        echo "     $command"
    done
    [[ -n "$official" ]] || echo "  (the official code's step is skipped: give --official and --panohead to add it)"
    echo "  then: $python bench/memory_budget.py --markdown  (the estimate the sliced run is checked against; no GPU needed)"
    exit 0
fi

if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_suite: no CUDA device here (torch.cuda.is_available() is False with $python) — this suite measures GPU numbers only and has not run anything; use --dry-run to see what it would run" >&2
    exit 3
fi

mkdir -p "$out"
"$python" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"gpu_suite on {p.name}, {p.total_memory / 2**30:.1f} GiB, torch {torch.__version__}")'
suite_start=$SECONDS
failed=0
declare -a summary
for item in "${items[@]}"; do
    IFS='|' read -r name share command <<< "$item"
    limit=$((budget * share / 100))
    left=$((budget - (SECONDS - suite_start)))
    (( limit > left )) && limit=$left
    if (( limit <= 0 )); then
        summary+=("$name: not run (the ${budget} s budget is spent)"); failed=1; continue
    fi
    echo
    echo "== $name (≤ ${limit} s)"
    echo "   $command"
    start=$SECONDS
    set +e
    timeout --signal=INT --kill-after=20 "$limit" $command
    status=$?
    set -e
    took=$((SECONDS - start))
    if (( status == 0 )); then
        summary+=("$name: done in ${took} s")
    else
        summary+=("$name: FAILED (exit $status after ${took} s$([[ $status -eq 124 ]] && echo ', over its time share'))"); failed=1
    fi
done

echo
echo "== summary (${budget} s budget, $((SECONDS - suite_start)) s used)"
for line in "${summary[@]}"; do echo "  $line"; done
"$python" - "$out" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for name, label in (("ld_full.json", "LD full size fp16"), ("ld_full_sliced.json", "LD full size fp16 + slicing"),
                    ("ld_200.json", "200-step stylization")):
    path = out / name
    if path.is_file():
        r = json.loads(path.read_text())
        peak = max(r["phase_peak_gib"].values())
        print(f"  {label}: {r['seconds_per_iteration']:.3f} s/iteration ({1 / r['seconds_per_iteration']:.2f} it/s), "
              f"peak VRAM {peak:.2f} GiB ({r['memory_kind']})")
path = out / "official.json"
if path.is_file():
    s = json.loads(path.read_text())["summary"]
    for side in ("ours", "official"):
        print(f"  {side} (compare_official): {s[side]['median']:.3f} s/iteration, peak {s[side]['memory_peak_bytes'] / 2**30:.2f} GiB")
    print(f"  official / ours: {s['ratio_median']:.2f}x")
EOF
"$python" bench/memory_budget.py --markdown || true
exit $failed
