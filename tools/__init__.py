"""The tools around the tutorial's code: what the programs need beyond the model and its training loop.

The tutorial is at the top of the project: reader.py (text -> windows), configs.py (the hyperparameters),
model.py (PTBModel and the truncated-BPTT loop) and ptb_word_lm.py (the epoch loop). What is here:

    tf1.py         TensorFlow's 1.x API set up for today's TensorFlow (every module imports tf from here)
    kernels.py     the LSTM kernels of rnn_mode block and fast, the fused GRU, matmuls in bf16 / fp16
    fast_variants.py  rnn_mode fast with its kernel's other options, for benchmark.py and the kernels' tests
    training.py    a training run's machinery: resume, periodic saves, progress lines, summaries, signals
    guard.py       the divergence guard: non-finite numbers stop training with exit code 3
    runfolder.py   --save_path: a folder owned by one training, known by what a run wrote
    checkpoint.py  the checkpoint files: weights, config.json, vocab.txt; written whole or not at all
    monitor.py     TensorBoard scalars, metrics.jsonl, perplexity.png, progress lines
    distribute.py  data parallelism with tf.distribute: replicas on several devices or machines
    cli.py         the programs' edge: flag ranges, one-line errors, exit codes, signals
    adapt.py       test-time adaptation for lm.py eval: each method's settings, log p under them, adapt.json
    cache.py       the neural cache (Grave et al. 2017)
    dynamic_eval.py  dynamic evaluation (Krause et al. 2018): the trained weights kept, the update, the passes
    rms_statistics.py  the RMS form's gradient statistics: gathered, kept in the run folder, read back
    tune.py        lm.py tune: the grids and searches that choose each method's settings, resumable
    embeddings.py  GloVe vectors in, nearest neighbours and TensorBoard's projector out
"""
