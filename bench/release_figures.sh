#!/usr/bin/env bash
# Every figure in docs/benchmarks.md and the README that depends on the built-in model's weights, rerun after
# a new release is copied into diffc_pipeline/models/builtin. Run from the repository root on an idle machine:
# about 90 minutes on 2 cores when idle (Ray start-ups and timings
# suffer beside other jobs). Most important first, so a cut-short run still leaves the headline figures.
# Outputs: bench/*.json (committed) and eval-*/ (git-ignored; copy plots to docs/img/ by hand).
# Speed and pipeline throughput depend on the architecture, not the weights: rerun them (last two lines)
# only when the network or the codec changes.
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
rm -rf demo-out && make demo                                                                         # 2 min
$D eval $CBSD --out eval-cbsd-tiles --downsample 3 --tile 64 --diffc-limit 24 \
    --steps 4,8,16,24,32,40 --batch-size 12 --workers 2 --threads 1                                  # 7 min
$D eval $CBSD --out eval-cbsd-full --limit 4 --channels rcc,ideal --methods flow,denoise \
    --steps 16,24,32,40 --batch-size 1 --workers 2 --threads 1                                       # 12 min
$D bench rate-breakdown --images 50 --tiles $CBSD --tile-count 16 --json bench/rate_breakdown.json  # 18 min
$D bench rate-breakdown --images 16 --tiles $CBSD --tile-count 8 --rd --json bench/rate_breakdown_rd.json
# $D bench speed --data $TIN --images 16 --batch-size 16 --large $CBSD --large-count 1 --threads 2 \
#     --json bench/speed.json
# $D bench pipeline --sizes 16,48 --batch-size 8 --json bench/pipeline.json
