#!/usr/bin/env bash
# Words/s of one process with 2 threads against 2 workers (TF_CONFIG, 127.0.0.1) with 1 thread each,
# on one 2-core machine; a part of an epoch of the small and the medium config (fast mode, fp32), nothing else
# running. Output: results/distribute-speed-avx2.txt or -avx512.txt, by the CPU. Usage, from the project root:
#   bash results/distribute_speed.sh ../shared/data/ptb
set -euo pipefail
DATA=${1:?give the corpus folder}
WORDS=${WORDS:-150000}
OUT=results/distribute-speed-$(grep -q avx512f /proc/cpuinfo && echo avx512 || echo avx2).txt
{
echo "# $(date -u '+%Y-%m-%d %H:%M UTC') | commit $(git rev-parse --short HEAD) | CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, $(grep -q avx512f /proc/cpuinfo && echo 'AVX-512' || echo 'AVX2 only')"
for model in small medium; do
  ARGS="--data_path=$DATA --model=$model --seed=1 --max_max_epoch=1 --train_words=$WORDS"
  echo "## $model: python ptb_word_lm.py $ARGS --num_threads=2"
  timeout 1800 python ptb_word_lm.py $ARGS --num_threads=2 2>&1 | grep -E '^0\.[0-9]+ perplexity' | head -9 || true
  PORTS=$(python -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1", 0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))')
  set -- $PORTS
  CLUSTER="\"cluster\": {\"worker\": [\"127.0.0.1:$1\", \"127.0.0.1:$2\"]}"
  echo "## $model: 2 workers, TF_CONFIG={$CLUSTER, task i}, python ptb_word_lm.py $ARGS --num_threads=1 (worker 0's lines)"
  TF_CONFIG="{$CLUSTER, \"task\": {\"type\": \"worker\", \"index\": 1}}" timeout 1800 \
      python ptb_word_lm.py $ARGS --num_threads=1 > /dev/null 2>&1 &
  TF_CONFIG="{$CLUSTER, \"task\": {\"type\": \"worker\", \"index\": 0}}" timeout 1800 \
      python ptb_word_lm.py $ARGS --num_threads=1 2>&1 | grep -E '^0\.[0-9]+ perplexity' | head -9 || true
  wait
done
} | tee "$OUT"
