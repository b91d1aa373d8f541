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
artifacts=${ARTIFACTS:-$repo/artifacts/pretrained}   # committed shared fits, one folder per dataset
fit() {  # the shared fit of task $1 into folder $2 (more train args after); resumes its own checkpoints
  # FIT_ARGS: more train arguments for the fit (tests shrink it; the suite's runs must match them)
  python -m pyscorepen.train --algo scorepen --task "$1" --pretrain-only --out "$2" --no-progress --threads 1 \
    ${FIT_ARGS:-} "${@:3}"
}
fit_from_committed() {  # fit() starting from a committed fit; on a fingerprint mismatch (exit 2) from scratch
  local rc=0
  fit "$@" || rc=$?
  if [[ $rc == 2 ]]; then
    echo "mujoco_grid.sh: the committed fit in $committed does not match this dataset; fitting here" >&2
    rm -f "$2"/dynamics-fit-*.pt
    fit "$1" "$2"
  elif [[ $rc != 0 ]]; then
    exit $rc
  fi
}
for task in $tasks; do
  slug=$(echo "$task" | tr '/' '_')
  pre="$out/pretrained/$slug"
  # The shared fit, one thread (it may run next to another process: no oversubscription). A fit
  # committed under artifacts/pretrained/ (see its README) is used when its fingerprint matches this
  # dataset (byte-identical when collected with `collect --reproducible`, the default): a finished
  # one instead of fitting, an unfinished one (dynamics-fit-<epoch>.pt) to resume from. On a
  # mismatch (the train CLI's exit 2) the fit starts from scratch here.
  committed="$artifacts/$slug"
  if [[ -f "$pre/dynamics.pt" ]] || compgen -G "$pre/dynamics-fit-*.pt" > /dev/null; then
    fit "$task" "$pre"
  elif [[ -f "$committed/dynamics.pt" ]]; then
    fit_from_committed "$task" "$pre" --pretrained-from "$committed"
  elif compgen -G "$committed/dynamics-fit-*.pt" > /dev/null; then
    mkdir -p "$pre" && cp "$committed"/dynamics-fit-*.pt "$pre"/
    fit_from_committed "$task" "$pre"
  else
    fit "$task" "$pre"
  fi
  if [[ ! -f "$pre/dynamics.pt" || ! -f "$pre/score.pt" ]]; then
    echo "mujoco_grid.sh: the shared fit in $pre did not finish (interrupted?); rerun to resume it" >&2
    exit 1
  fi
done
[[ -n "${FIT_ONLY:-}" ]] && exit 0   # FIT_ONLY=1: the shared fits only
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
