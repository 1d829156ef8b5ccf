#!/usr/bin/env bash
# Every figure in docs/benchmarks.md and the README that depends on the built-in model, rerun after a new
# release is copied into diffc_pipeline/models/builtin. Run from the repository root on an idle machine
# (about 40 minutes on 2 cores; Ray start-ups and timings suffer beside other jobs). Outputs: bench/*.json
# (committed) and eval-release-*/ (git-ignored; copy plots to docs/img/ by hand). The 500-image Tiny
# ImageNet run (51 min) is separate: see docs/benchmarks.md.
set -euxo pipefail
D=${DIFFC:-.venv/bin/diffc}
TIN=../shared/data/tinyimagenet/val
CBSD=../shared/data/cbsd68
$D model eval --data $TIN --model builtin --limit 100 --threads 2 --json bench/model_eval.json
$D model eval --data $TIN --model builtin --limit 500 --threads 2 --json bench/model_eval_500.json
$D eval $CBSD --out eval-release-cbsd-tiles --downsample 3 --tile 64 --diffc-limit 24 \
    --steps 4,8,16,24,32,40 --batch-size 12 --workers 2 --threads 1
$D eval $TIN --out eval-release-tin-50 --limit 500 --diffc-limit 50 --channels rcc \
    --methods flow,ancestral,denoise --steps 8,16,24,32,40 --batch-size 10 --workers 2 --threads 1
rm -rf demo-out && make demo
$D bench speed --data $TIN --images 16 --batch-size 16 --large $CBSD --large-count 1 --threads 2 \
    --json bench/speed.json
$D eval $CBSD --out eval-release-cbsd-full --limit 4 --channels rcc,ideal --methods flow,denoise \
    --steps 16,24,32,40 --batch-size 1 --workers 2 --threads 1
$D bench pipeline --sizes 16,48 --batch-size 8 --json bench/pipeline.json
