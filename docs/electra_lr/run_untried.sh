#!/bin/bash
# Issue 18, item 3: the changes section 3 of results.md had not tried, one at a time, on section
# 2's command (ELECTRA-tiny at lr 5e-4, 600-step schedule, validation every 50 steps), one seed
# each, on the 2-core VM (one or two at a time, as below); each run's metrics.jsonl is copied
# to runs/<name>.
# As run: docs/electra_lr/run_untried.sh gdes gen_half lambda_10 warmup_400 deberta_shape_gdes
# then (section 6: DeBERTa-v3 tiny's recipe, one part at a time):
#   docs/electra_lr/run_untried.sh deberta_v3 deberta_data_gdes
#   docs/electra_lr/run_untried.sh deberta_v3_absolute & docs/electra_lr/run_untried.sh deberta_shape_gdes_emb128
#   docs/electra_lr/run_untried.sh sinusoidal & docs/electra_lr/run_untried.sh deberta_shape_gdes_sinusoidal
# then (section 7): docs/electra_lr/run_untried.sh batch128 (beside one ablation sweep)
# then (section 8): docs/electra_lr/run_untried.sh small_shape (beside one ablation sweep)
# then (section 10): docs/electra_lr/run_untried.sh mask_25 (beside one ablation sweep)
# then (section 12): docs/electra_lr/run_untried.sh relative_key_query deberta_v3_unnormed_rel
#   relative_key_query_wide, then deberta_shape_gdes_rkq deberta_shape_gdes_rkq_wide,
#   then relative_key_query_norm, then relative_key_query_std1 relative_key_query_norm_seed1
#   (beside one ablation sweep)
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
export GLIBC_TUNABLES=glibc.malloc.hugetlb=1
run() {  # name, overrides...; $CONFIG (default ELECTRA-tiny) is the family config.
  local name=$1; shift
  python -m experiments.pretrain --config "${CONFIG:-configs/electra.py:tiny}" --workdir "workdirs/electra_lr_$name" \
      --config.optimizer.learning_rate=5e-4 --config.train.num_steps=600 --config.train.eval_every=50 \
      --config.train.log_every=10 --config.checkpoint.every_steps=100 --config.train.progress_bar=False \
      "$@" 2>&1 | grep -E '^step|^Plan' > "workdirs/electra_lr_$name.log"
  mkdir -p "docs/electra_lr/runs/$name"
  cp "workdirs/electra_lr_$name/metrics.jsonl" "docs/electra_lr/runs/$name/"
}
for spec in "${@:-gen_half lambda_10 warmup_400}"; do
  for name in $spec; do
    case $name in
      gen_half) run gen_half --config.model.generator_size_fraction=0.5 ;;  # width 64 (1/2 of 128)
      lambda_10) run lambda_10 --config.model.rtd_weight=10.0 ;;
      warmup_400) run warmup_400 --config.optimizer.warmup_steps=400 ;;
      gdes) run gdes --config.model.embedding_gradients=gdes ;;
      # ELECTRA-Large's masking rate (25% of the tokens; Small and Base mask 15%): the MLM
      # models of the tiny sweeps read word order far more at 30% (docs/ablations_tiny/word_order.md).
      mask_25) run mask_25 --config.data.mask_rate=0.25 ;;
      # ELECTRA-Small's batch (128 x 128; its lr 5e-4 is set for that batch, tiny's is 32).
      batch128) run batch128 --config.train.batch_size=128 ;;
      # ELECTRA-Small's shape (12 layers, 256 wide, 4 heads, 128-wide embeddings, a generator of
      # 1/4 its width) on tiny's data, batch and schedule: is the fall a matter of the tiny shape?
      small_shape) run small_shape --config.model.num_layers=12 --config.model.hidden_size=256 \
          --config.model.num_heads=4 --config.model.intermediate_size=1024 \
          --config.model.embedding_size=128 ;;
      # DeBERTa-v3 tiny's shape, where its GDES recovered (docs/deberta_v3_rtd): a 4-layer
      # discriminator, a generator of its width at half its depth, GDES.
      deberta_shape_gdes) run deberta_shape_gdes --config.model.num_layers=4 \
          --config.model.generator_size_fraction=1.0 --config.model.generator_num_layers=2 \
          --config.model.embedding_gradients=gdes ;;
      # DeBERTa-v3 tiny itself (GDES, its attention and RTD head, its data) at 5e-4, not 1e-3.
      deberta_v3) CONFIG=configs/deberta.py:tiny,objective=rtd run deberta_v3 ;;
      # ... with BERT's attention: no relative positions, absolute ones added at the input
      # (and so no EMD, which would add them a second time).
      deberta_v3_absolute) CONFIG=configs/deberta.py:tiny,objective=rtd run deberta_v3_absolute \
          --config.model.relative_attention=False --config.model.position_biased_input=True \
          --config.model.emd=False ;;
      # deberta_shape_gdes with embeddings as wide as the encoders (128; ELECTRA-tiny's are 64).
      deberta_shape_gdes_emb128) run deberta_shape_gdes_emb128 --config.model.num_layers=4 \
          --config.model.generator_size_fraction=1.0 --config.model.generator_num_layers=2 \
          --config.model.embedding_gradients=gdes --config.model.embedding_size=128 ;;
      # ... with the distance table drawn as large as a key's entries at init (0.02 x sqrt(128)
      # ~ 0.23 in the discriminator), not at 0.02: position scores as large as content scores.
      relative_key_query_wide) run relative_key_query_wide \
          --config.model.position_embedding_type=relative_key_query \
          --config.model.distance_init_range=0.2 ;;
      # ... with each distance row LayerNorm'd before it is read, as DeBERTa its relative
      # embeddings: rows of unit scale whose direction Adam turns ~50x faster than 0.02-sized ones.
      relative_key_query_norm) run relative_key_query_norm \
          --config.model.position_embedding_type=relative_key_query \
          --config.model.distance_layer_norm=True ;;
      relative_key_query_norm_seed1) run relative_key_query_norm_seed1 --config.seed=1 \
          --config.model.position_embedding_type=relative_key_query \
          --config.model.distance_layer_norm=True ;;
      # ... not normalised, but drawn at std 1: rows as large as the LayerNorm'd ones (norm 8)
      # that Adam turns as slowly as the 0.2-wide table's.
      relative_key_query_std1) run relative_key_query_std1 \
          --config.model.position_embedding_type=relative_key_query \
          --config.model.distance_init_range=1.0 ;;
      # deberta_shape_gdes (DeBERTa-v3 tiny's shape, GDES) with relative_key_query positions,
      # the distance table drawn at 0.02 and at 0.2.
      deberta_shape_gdes_rkq) run deberta_shape_gdes_rkq --config.model.num_layers=4 \
          --config.model.generator_size_fraction=1.0 --config.model.generator_num_layers=2 \
          --config.model.embedding_gradients=gdes \
          --config.model.position_embedding_type=relative_key_query ;;
      deberta_shape_gdes_rkq_wide) run deberta_shape_gdes_rkq_wide --config.model.num_layers=4 \
          --config.model.generator_size_fraction=1.0 --config.model.generator_num_layers=2 \
          --config.model.embedding_gradients=gdes \
          --config.model.position_embedding_type=relative_key_query \
          --config.model.distance_init_range=0.2 ;;
      # DeBERTa-v3 tiny with its relative embeddings not LayerNorm'd: distance rows of std 0.02,
      # as small as relative_key_query's, where LayerNorm makes them of order 1.
      deberta_v3_unnormed_rel) CONFIG=configs/deberta.py:tiny,objective=rtd \
          run deberta_v3_unnormed_rel --config.model.norm_rel_ebd=none ;;
      # ELECTRA-tiny with its absolute position table initialised sinusoidal (same std, learned).
      sinusoidal) run sinusoidal --config.model.position_init=sinusoidal ;;
      # ELECTRA-tiny with transformers' relative_key_query positions (Huang et al. 2020): a
      # distance table read by the queries and the keys of every layer, no absolute positions.
      relative_key_query) run relative_key_query \
          --config.model.position_embedding_type=relative_key_query ;;
      deberta_shape_gdes_sinusoidal) run deberta_shape_gdes_sinusoidal --config.model.num_layers=4 \
          --config.model.generator_size_fraction=1.0 --config.model.generator_num_layers=2 \
          --config.model.embedding_gradients=gdes --config.model.position_init=sinusoidal ;;
      # deberta_shape_gdes with DeBERTa-v3 tiny's data: whole-word n-gram masking (80/10/10),
      # full_sentences rows, a cased unigram vocabulary.
      deberta_data_gdes) run deberta_data_gdes --config.model.num_layers=4 \
          --config.model.generator_size_fraction=1.0 --config.model.generator_num_layers=2 \
          --config.model.embedding_gradients=gdes --config.data.masking=ngram \
          --config.data.mask_token_prob=0.8 --config.data.random_token_prob=0.1 \
          --config.data.input_format=full_sentences --config.data.short_seq_prob=0.1 \
          --config.data.tokenizer=unigram --config.data.lowercase=False ;;
    esac
  done
done
