#!/usr/bin/env bash
# What the programs compute, recorded so that a change of the code's shape can be shown to change none of it.
#
#     bash results/record_numbers.sh OUT.txt          # from the project root; PTB_DATA: the corpus folder
#
# Runs, on the real corpus: one short epoch of small (100,000 training words, --seed=1) in each rnn_mode (fast, the
# default, basic and block) and in bf16; lm.py eval, predict, score and generate on the fast run's checkpoint; lm.py
# eval with the cache, dynamic evaluation (SGD and RMS) and both; and the test config on two replicas. OUT.txt gets
# every line they print but those that depend on time (speed, ETA, wall time) and the scratch folder's name.
# Digit for digit the same on one CPU, run after run; the last digits differ between instruction sets, so compare
# two records made on the same CPU (its flags head the file).
set -euo pipefail
out=${1:?give the file to write, e.g. results/numbers-before.txt}
data=${PTB_DATA:-../shared/data/ptb}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export TF_CPP_MIN_LOG_LEVEL=3 LC_ALL=C.UTF-8

run() {  # run LABEL COMMAND...: the command's output, less what depends on time or on the scratch folder's name
  echo "## $1"
  shift
  "$@" 2>&1 | sed -e "s#$scratch#SCRATCH#g" -e 's/ speed: .*//' -e '/^Wall time/d' || echo "exit $?"
}

small=(--data_path="$data" --model=small --seed=1 --max_max_epoch=1 --train_words=100000)
head -c 30000 "$data/ptb.valid.txt" > "$scratch/valid.txt"   # about 5,600 words: adaptation takes seconds
head -c 60000 "$data/ptb.train.txt" > "$scratch/train.txt"   # the RMS form's statistics text
head -n 20 "$data/ptb.valid.txt" > "$scratch/sentences.txt"   # for lm.py score
{
  has() { grep -q -m1 "$1" /proc/cpuinfo && echo yes || echo no; }
  echo "# CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); AVX-512: $(has avx512f); avx512_bf16: $(has avx512_bf16)"
  run "small, default mode" python ptb_word_lm.py "${small[@]}" --save_path="$scratch/fast"
  run "small, basic" python ptb_word_lm.py "${small[@]}" --rnn_mode=basic --save_path="$scratch/basic"
  run "small, block" python ptb_word_lm.py "${small[@]}" --rnn_mode=block --save_path="$scratch/block"
  run "small, bf16" python ptb_word_lm.py "${small[@]}" --precision=bf16 --save_path="$scratch/bf16"
  run "lm.py eval" python lm.py eval --save_path="$scratch/fast" --input="$data/ptb.test.txt"
  run "lm.py predict" python lm.py predict --save_path="$scratch/fast" --context="the stock market" --top_k=5
  run "lm.py score" python lm.py score --save_path="$scratch/fast" --input="$scratch/sentences.txt"
  run "lm.py generate" python lm.py generate --save_path="$scratch/fast" --prompt="the company said" \
    --num_words=20 --seed=1
  run "lm.py eval, cache" python lm.py eval --save_path="$scratch/fast" --input="$scratch/valid.txt" \
    --cache_size=500 --cache_theta=0.3 --cache_lambda=0.1
  run "lm.py eval, dynamic" python lm.py eval --save_path="$scratch/fast" --input="$scratch/valid.txt" \
    --dynamic_lr=0.03 --dynamic_window=20 --dynamic_decay=0.01
  run "lm.py eval, dynamic RMS and cache" python lm.py eval --save_path="$scratch/fast" \
    --input="$scratch/valid.txt" --dynamic_lr=5e-4 --dynamic_window=10 --dynamic_decay=0.01 \
    --dynamic_rms="$scratch/train.txt" --cache_size=500 --cache_theta=0.3 --cache_lambda=0.1
  run "test config, 2 replicas" python ptb_word_lm.py --data_path="$data" --model=test --seed=1 \
    --train_words=100000 --replicas=2 --save_path="$scratch/replicas"
} > "$out"
echo "wrote $out"
