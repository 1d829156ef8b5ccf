#!/usr/bin/env bash
# The headline figures in docs/benchmarks.md and the README that depend on the built-in model's weights,
# rerun after a new release is copied into diffc_pipeline/models/builtin. Run from the repository root on an
# idle machine (Ray start-ups and timings suffer beside other jobs): about 2 h 20 min on 2 cores - the lines
# down to the full-size eval took 83 min idle (2026-11-22 14:44-16:07; the full-size eval is now 12 photos
# with both channels, 57 min beside a test run on 2026-12-03), the two rate-breakdown runs 5 and 13 min beside a
# test run (2026-12-03); make demo runs CDC too (4 min 42 s beside a training run).
# Most important first, so a cut-short run still leaves the headline figures.
# Outputs: bench/*.json (committed) and eval-*/ (git-ignored; copy plots to docs/img/ by hand).
# Not rerun here, though they used a model: diffc bench channel-rd (releases 2, 3), exact-tail (release 6),
# prior-variance and rate-breakdown --prior-variance (docs/benchmarks.md gives their commands), and the
# photo fine-tune comparison. Speed and pipeline throughput depend on the architecture, not the weights:
# rerun them (last two lines) only when the network or the codec changes; likewise diffc bench network.
set -euxo pipefail
D=${DIFFC:-.venv/bin/diffc}
TIN=../shared/data/tinyimagenet/val
CBSD=../shared/data/cbsd68
$D model eval --data $TIN --model builtin --limit 500 --threads 2 --json bench/model_eval_500.json   # 6 min
$D model eval --data $TIN --model builtin --limit 100 --threads 2 --json bench/model_eval.json       # 1 min
$D eval $TIN --out eval-tin --limit 500 --diffc-limit 500 --methods flow,denoise \
    --steps 4,8,16,24,32,40 --batch-size 10 --workers 2 --threads 1                                  # 47 min
$D eval $TIN --out eval-tin-fa --limit 500 --diffc-limit 100 --anchors none --methods flow,ancestral \
    --steps 40 --codec-opt ancestral_steps=128 --batch-size 10 --workers 2 --threads 1               # 10 min
rm -rf demo-out && make demo                                                                         # 5 min
$D eval $CBSD --out eval-cbsd-tiles --downsample 3 --tile 64 --diffc-limit 24 \
    --steps 4,8,16,24,32,40 --batch-size 12 --workers 2 --threads 1                                  # 7 min
$D eval $CBSD --out eval-cbsd12 --limit 12 --channels rcc,ideal --methods flow \
    --steps 16,24,32,40 --batch-size 1 --workers 2 --threads 1                                       # ~55 min
$D bench rate-breakdown --images 50 --tiles $CBSD --tile-count 16 --json bench/rate_breakdown.json  # 5 min
$D bench rate-breakdown --images 16 --tiles $CBSD --tile-count 8 --rd --json bench/rate_breakdown_rd.json  # 13 min
# $D bench speed --data $TIN --images 16 --batch-size 16 --large $CBSD --large-count 1 --threads 2 \
#     --json bench/speed.json
# $D bench pipeline --sizes 16,48 --batch-size 8 --json bench/pipeline.json
