#!/usr/bin/env bash
# Evidence for strategy zoo III part 2 (issue 16): every sweep of docs/methods.md "Zoo III (source papers),
# part 2", in the order they were run. Each stage is one `clbench sweep` of a file in configs/sweep/, each
# sweep in its own folder; the tables come from `clbench report` over the parent folders (sweeps/zoo3b,
# sweeps/zoo3b-pmnist, sweeps/zoo3b-fewshot, sweeps/zoo3b-rfree1000), which reads them recursively.
#   CLBENCH_DATA=/path/to/datasets bash benchmarks/zoo3b.sh baselines select rfree rfree-reduced protocl hnet schedule bvcl fewshot report
set -euo pipefail
export OMP_NUM_THREADS=1
for stage in "$@"; do
  case "$stage" in
    baselines) clbench sweep sweep=zoo3-baselines ;;
    select)
      clbench sweep sweep=zoo3-rehearsal-free-select "strategy.terms=[pred_kd,l2]" strategy.l2=1e-4,1e-3,1e-2,0.1,1 \
        out=sweeps/zoo3b-select/l2
      clbench sweep sweep=zoo3-rehearsal-free-select "strategy.terms=[pred_kd,ewc]" strategy.ewc=0.01,0.1,1,10,100 \
        out=sweeps/zoo3b-select/ewc
      clbench sweep sweep=zoo3-rehearsal-free-select "strategy.terms=[pred_kd,feat_kd]" strategy.feat_kd=0.001,0.01,0.1,1,10 \
        out=sweeps/zoo3b-select/feat_kd
      python benchmarks/zoo3b_select.py sweeps/zoo3b-select ;;
    rfree)   # the arms with the weights picked on validation (select)
      # shellcheck disable=SC2046
      clbench sweep sweep=zoo3-rehearsal-free $(python benchmarks/zoo3b_select.py sweeps/zoo3b-select --overrides) ;;
    rfree-reduced)   # the same arms and weights at 1000 training images per class, with their own baselines
      clbench sweep sweep=zoo3-baselines benchmark=split-mnist dataset.train_per_class=1000 out=sweeps/zoo3b-rfree1000/baselines
      # shellcheck disable=SC2046
      clbench sweep sweep=zoo3-rehearsal-free dataset.train_per_class=1000 out=sweeps/zoo3b-rfree1000/arms \
        $(python benchmarks/zoo3b_select.py sweeps/zoo3b-select --overrides)
      clbench report sweeps/zoo3b-rfree1000 --no-figures ;;
    protocl) clbench sweep sweep=zoo3-protocl ;;
    hnet) clbench sweep sweep=zoo3-hnet ;;
    schedule) clbench sweep sweep=zoo3-schedule ;;
    bvcl) clbench sweep sweep=zoo3-binary-vcl ;;
    fewshot) clbench sweep sweep=zoo3-few-shot ;;
    report)
      clbench report sweeps/zoo3b --no-figures
      clbench report sweeps/zoo3b-pmnist --no-figures
      clbench report sweeps/zoo3b-fewshot --no-figures ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
