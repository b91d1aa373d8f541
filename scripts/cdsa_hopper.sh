#!/usr/bin/env bash
# Issue 11's Hopper experiments: IQL vs CDSA(IQL) and ScorePen-MORL vs CDSA(ScorePen-MORL) on the
# locally collected Hopper-v5 datasets (random, medium), at budgets set by env vars. Resumable:
# rerun the same command; a finished step (its policy.pt / summary.json exists) is skipped, an
# unfinished training run resumes from its newest checkpoint.
#
#   MINARI_DATASETS_PATH=/path/to/datasets OUT=runs/cdsa_hopper IQL_STEPS=30000 SP_STEPS=15000 \
#       SP_DYN_EPOCHS=8 SEEDS="0" bash scripts/cdsa_hopper.sh
#
# Datasets (docs/mujoco.md): python -m pyscorepen.collect --env-id Hopper-v5 --levels random medium
#     --expert-return 3234.3 --steps 1000000
# The full budgets of the papers: IQL_STEPS=1000000, SP_STEPS=1000000, SP_DYN_EPOCHS=none (early stopping only).
#
# Env vars
#   OUT            runs folder (default runs/cdsa_hopper)
#   LEVELS         dataset levels, in order (default "random medium")
#   BASES          base learners, in order (default "iql scorepen")
#   SEEDS          training seeds of the base learners and CDSA (default "0")
#   IQL_STEPS      IQL gradient steps; the actor's cosine lr decay spans them (default 1000000)
#   SP_STEPS       ScorePen-MORL gradient steps (default 1000000)
#   SP_DYN_EPOCHS  cap on the dynamics-fit epochs of ScorePen-MORL ("none": early stopping only; default 30)
#   SP_SCORE_STEPS score-model training steps of ScorePen-MORL (default 5000, the library's)
#   EPISODES       evaluation episodes of base vs corrected, same initial states (default 100)
#   KSEARCH        1: also the online (K1, K2) search (default 0)
#   KS_K1, KS_K2   its grids (default "0 0.001 0.01 0.1" and "0 0.001 0.01 0.1 1")
#   KS_EPISODES    episodes per grid cell (default 20)
#   THREADS        torch threads per process (default 1)
set -euo pipefail
out=${OUT:-runs/cdsa_hopper}
levels=${LEVELS:-"random medium"}
bases=${BASES:-"iql scorepen"}
seeds=${SEEDS:-"0"}
iql_steps=${IQL_STEPS:-1000000}
sp_steps=${SP_STEPS:-1000000}
sp_dyn_epochs=${SP_DYN_EPOCHS:-30}
sp_score_steps=${SP_SCORE_STEPS:-5000}
episodes=${EPISODES:-100}
threads=${THREADS:-1}
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
common=(--threads "$threads" --no-progress)
mkdir -p "$out/eval"

train() {  # train RUN_DIR ARGS...: skip a finished run, resume an unfinished one
  local run=$1; shift
  if [ -f "$run/policy.pt" ]; then echo "[cdsa_hopper] done: $run"; return; fi
  echo "[cdsa_hopper] $(date -u +%H:%M:%S) train $run"
  python -m pyscorepen.train "$@" "${common[@]}" --out "$run" 2>&1 | tee -a "$run.log"
}

for level in $levels; do
  task=pyscorepen/hopper/$level-v0
  for seed in $seeds; do
    # CDSA's three networks: 10k iterations, batch 256 (Table 3); K1, K2 of Table 2 stored in its config
    train "$out/cdsa-$level-s$seed" --algo cdsa --task "$task" --seed "$seed" --eval-episodes 2
    for base in $bases; do
      run=$out/$base-$level-s$seed
      case $base in
        iql) train "$run" --algo iql --task "$task" --seed "$seed" --steps "$iql_steps" \
               --iql.actor-lr-decay-steps "$iql_steps" --eval-interval $((iql_steps / 4)) --eval-episodes 10 ;;
        scorepen)
          dyn=(--dynamics.max-epochs "$sp_dyn_epochs"); [ "$sp_dyn_epochs" = none ] && dyn=(--dynamics.max-epochs None)
          train "$run" --algo scorepen --task "$task" --seed "$seed" --steps "$sp_steps" "${dyn[@]}" \
            --score.train-steps "$sp_score_steps" --eval-interval $((sp_steps / 4)) --eval-episodes 10 ;;
        *) train "$run" --algo "$base" --task "$task" --seed "$seed" ;;
      esac
      # base vs corrected on the same initial states, K1, K2 of Table 2 (the CDSA run's defaults)
      eval_out=$out/eval/$base-$level-s$seed
      if [ ! -f "$eval_out/summary.json" ]; then
        echo "[cdsa_hopper] $(date -u +%H:%M:%S) evaluate $run"
        python -m pyscorepen.evaluate "$run" --cdsa "$out/cdsa-$level-s$seed" --episodes "$episodes" --out "$eval_out" \
          > "$eval_out.json"
      fi
      if [ "${KSEARCH:-0}" = 1 ] && [ ! -f "$out/k_search/$base-$level-s$seed/k_search.csv" ]; then
        echo "[cdsa_hopper] $(date -u +%H:%M:%S) online K search $run"
        python -m pyscorepen.experiments.cdsa_k_search "$run" --cdsa "$out/cdsa-$level-s$seed" \
          --k1 ${KS_K1:-0 0.001 0.01 0.1} --k2 ${KS_K2:-0 0.001 0.01 0.1 1} --episodes "${KS_EPISODES:-20}" \
          --out "$out/k_search/$base-$level-s$seed"
      fi
    done
  done
done

# The online-tuned K, checked on fresh initial states: the best (K1, K2) of every k_search/<run>*
# table (by mean return on the search's episodes, seeds 10000..) evaluated again on EPISODES
# episodes from HELDOUT_SEED (default 20000), base and corrected on the same initial states.
if [ "${KSEARCH:-0}" = 1 ] && [ "${HELDOUT:-1}" = 1 ]; then
  for level in $levels; do for seed in $seeds; do for base in $bases; do
    name=$base-$level-s$seed
    [ -f "$out/eval_tuned/$name/summary.json" ] && continue
    ls "$out"/k_search/"$name"*/k_search.csv >/dev/null 2>&1 || continue
    read -r k1 k2 < <(python - "$out"/k_search/"$name"*/k_search.csv <<'PY'
import csv, sys
rows = [r for f in sys.argv[1:] for r in csv.DictReader(open(f)) if r["iterations"] != "0"]
best = max(rows, key=lambda r: float(r["return_mean"]))
print(best["k1"], best["k2"])
PY
)
    echo "[cdsa_hopper] $(date -u +%H:%M:%S) held-out evaluation $name, K1=$k1 K2=$k2 (tuned online)"
    mkdir -p "$out/eval_tuned"
    python -m pyscorepen.evaluate "$out/$name" --cdsa "$out/cdsa-$level-s$seed" --k1 "$k1" --k2 "$k2" \
      --episodes "$episodes" --seed "${HELDOUT_SEED:-20000}" --out "$out/eval_tuned/$name" > "$out/eval_tuned/$name.json"
  done; done; done
fi
