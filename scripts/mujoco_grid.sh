#!/usr/bin/env bash
# Issue 10's required grid: MOPO, MOBILE and ScorePen-MORL x {halfcheetah-medium, hopper-medium-replay}
# x 3 seeds at one gradient-step budget, with ONE dynamics ensemble + score model per dataset (trained
# to convergence: no epoch cap) shared by every run. Everything resumes: rerun the same command.
#
#   MINARI_DATASETS_PATH=/path/to/datasets STEPS=200000 PARALLEL=2 bash scripts/mujoco_grid.sh
#
# The datasets come from (see docs/mujoco.md):
#   python -m pyscorepen.collect --env-id HalfCheetah-v5 --levels random medium medium-replay --expert-return 12135.0 --steps 400000
#   python -m pyscorepen.collect --env-id Hopper-v5 --levels random medium medium-replay --expert-return 3234.3 \
#       --medium-replay-size 400000 --steps 1000000
set -euo pipefail
# Ctrl-C / SIGTERM stops the whole chain (every train run checkpoints itself and exits 0 on SIGINT,
# so without this the script would go on to the next step)
trap 'echo "mujoco_grid.sh: interrupted; rerun the same command to resume" >&2; exit 130' INT TERM
steps=${STEPS:-200000}
parallel=${PARALLEL:-2}
out=${OUT:-runs/grid}
tasks=${TASKS:-"pyscorepen/halfcheetah/medium-v0 pyscorepen/hopper/medium-replay-v0"}
algos=${ALGOS:-"mopo mobile scorepen"}
# torch threads of every run; default: the suite divides this process's cores by PARALLEL. Set
# THREADS_PER_RUN=1 when anything else runs on the machine (e.g. one chain per dataset): a run
# with more threads than its share of the cores slows ~10-25x (OpenMP spin-waits)
threads_per_run=${THREADS_PER_RUN:+--threads-per-run $THREADS_PER_RUN}
repo=$(cd "$(dirname "$0")/.." && pwd)
for task in $tasks; do
  slug=$(echo "$task" | tr '/' '_')
  pre="$out/pretrained/$slug"
  # the shared fit, one thread (it may run next to another process: no oversubscription). A fit
  # committed under artifacts/pretrained/ is used instead when its fingerprint matches this dataset
  # (byte-identical when collected with `collect --reproducible`, the default); else fit here.
  committed="$repo/artifacts/pretrained/$slug"
  if [[ -f "$committed/dynamics.pt" && ! -f "$pre/dynamics.pt" ]] &&
     python -m pyscorepen.train --algo scorepen --task "$task" --pretrain-only --out "$pre" --no-progress \
       --threads 1 --pretrained-from "$committed"; then
    echo "mujoco_grid.sh: using the committed shared fit $committed" >&2
  else
    python -m pyscorepen.train --algo scorepen --task "$task" --pretrain-only --out "$pre" --no-progress --threads 1
  fi
  if [[ ! -f "$pre/dynamics.pt" || ! -f "$pre/score.pt" ]]; then
    echo "mujoco_grid.sh: the shared fit in $pre did not finish (interrupted?); rerun to resume it" >&2
    exit 1
  fi
done
# seed 0 of every algorithm first (a first ranking early), then seeds 1 and 2; finished runs are skipped
for seeds in "0" "0 1 2"; do
  for task in $tasks; do
    slug=$(echo "$task" | tr '/' '_')
    python -m pyscorepen.suite --algos $algos --tasks "$task" --seeds $seeds --steps "$steps" \
      --out "$out/suite" --parallel "$parallel" $threads_per_run --extra-args="--pretrained-from $out/pretrained/$slug --no-progress"
  done
done
# PUBLISH=docs/results/mujoco-grid also copies the table, curves and commands there (to commit)
python -m pyscorepen.suite --algos $algos --tasks $tasks --seeds 0 1 2 --steps "$steps" --out "$out/suite" --aggregate-only \
  ${PUBLISH:+--publish "$PUBLISH"}
