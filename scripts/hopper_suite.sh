#!/usr/bin/env bash
# Reproduces the README's Hopper table: one shared dynamics/score pretraining per dataset, then
# MOPO / COMBO / ScorePen x 2 seeds at an equal gradient-step budget.
#   MINARI_DATASETS_PATH=data/minari bash scripts/hopper_suite.sh medium-replay 30
#   MINARI_DATASETS_PATH=data/minari bash scripts/hopper_suite.sh medium 8
# (the datasets come from `python -m pyscorepen.collect --env-id Hopper-v5 ...`, see README)
set -euo pipefail
level=${1:?dataset level, e.g. medium-replay}
epochs=${2:-30}
steps=${STEPS:-5000}
task=pyscorepen/hopper/${level}-v0
common="--dynamics.max-epochs ${epochs} --rollout.batch-size 10000 --eval-episodes 5"
pre=runs/hopper-${level}-pretrained
python -m pyscorepen.train --algo scorepen --task "$task" --pretrain-only --out "$pre" --no-progress $common
python -m pyscorepen.suite --algos mopo combo scorepen --tasks "$task" --seeds 0 1 --steps "$steps" --eval-interval 1000 \
  --out runs/hopper_suite --extra-args="--pretrained-from $pre $common"
