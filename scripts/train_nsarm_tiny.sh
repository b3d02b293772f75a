#!/usr/bin/env bash
# Reproduces nsarm-tiny, the model bundled in nsarm_core/assets/nsarm-tiny (model card: docs/model_card.md),
# with the project's own commands on CPU:
#
#   1. data       scripts/prepare_data.py: 32 training photos + 5 held-out photos from Debian packages
#   2. tokenizer  nsarm train-tokenizer --config tokenizer_tiny
#   3. base       nsarm train-base --config base_tiny        } run side by side, one CPU thread each
#      stage 1    nsarm train-stage1 --config stage1_tiny    }
#   4. stage 2    nsarm train-stage2 --config stage2_tiny, from the base transformer and the stage-1 network
#   5. models     runs/nsarm-tiny-v1 (stage 2: the paper's NSARM at our scale) and runs/nsarm-tiny-stage1-only
#   6. CFW        nsarm train-cfw --config cfw_tiny: controllable feature wrapping + decoder (L1 + GAN) on top of
#                 the frozen v1 networks -> runs/cfw_tiny/final/model (v2.0), then two continuation rounds of
#                 cfw_tiny_ft (clean inputs weighted up, latent-noise augmentation; seeds 1 and 2, each from
#                 the previous round) -> runs/cfw_tiny_ft2/final/model, nsarm-tiny v2.1 (the bundled model)
#   7. evaluate   scripts/tune_fidelity.sh (default w, on training photos), scripts/tune_speck_guard.sh (the
#                 speck guard's threshold, on training photos) and scripts/evaluate_nsarm_tiny.sh
#                 (bicubic, Real-ESRGAN x4plus, v1 and v2 at each w on the held-out photos)
#
# Every training step is resumable: run the script again after an interruption and each stage continues from
# its newest checkpoint (finished stages are skipped). `INSTALL=1` lets prepare_data.py apt-get the photo
# packages. Set STEPS_* to shorten a trial run (the shipped model used the defaults below).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
# glibc hands every freed block over 32 MiB back to the kernel, so each step re-faults its large activations
# (measured on stage 1: ~350k page faults/s, half of the CPU time in the kernel). jemalloc without page
# purging keeps them mapped: 2.5x faster steps (apt-get install libjemalloc2). Used when present.
JEMALLOC=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
if [ -z "${LD_PRELOAD:-}" ] && [ -f "$JEMALLOC" ]; then
  export LD_PRELOAD=$JEMALLOC MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1,background_thread:false
fi
STEPS_TOKENIZER=${STEPS_TOKENIZER:-4000}
STEPS_BASE=${STEPS_BASE:-1500}
STEPS_STAGE1=${STEPS_STAGE1:-1500}
STEPS_STAGE2=${STEPS_STAGE2:-1300}
STEPS_CFW=${STEPS_CFW:-1500}
STEPS_CFW_FT=${STEPS_CFW_FT:-1500}
VAE=runs/tokenizer_tiny/final/vae

# 1. Data (skipped when data/train and data/val exist).
if [ ! -d data/train ] || [ ! -d data/val ]; then
  python scripts/prepare_data.py ${INSTALL:+--install}
fi

# 2. Tokenizer (~4000 steps of batch 8 at 128 px, bf16 autocast).
nsarm train-tokenizer --config tokenizer_tiny --max-steps "$STEPS_TOKENIZER" --resume latest

# 3. Base transformer and stage 1 need only the tokenizer: one thread each, side by side.
OMP_NUM_THREADS=1 nsarm train-base --config base_tiny --max-steps "$STEPS_BASE" --resume latest \
  --set stage.vae_weights="$VAE" > runs/base_tiny.log 2>&1 &
base_pid=$!
OMP_NUM_THREADS=1 nsarm train-stage1 --config stage1_tiny --max-steps "$STEPS_STAGE1" --resume latest \
  --set stage.vae_weights="$VAE" > runs/stage1_tiny.log 2>&1 &
stage1_pid=$!
wait "$base_pid" || { echo "train-base failed: see runs/base_tiny.log" >&2; exit 1; }
wait "$stage1_pid" || { echo "train-stage1 failed: see runs/stage1_tiny.log" >&2; exit 1; }

# 4. Stage 2: the base transformer + the stage-1 network, fine-tuned end to end (Alg. 2).
nsarm train-stage2 --config stage2_tiny --max-steps "$STEPS_STAGE2" --resume latest \
  --set stage.vae_weights="$VAE" \
  --set stage.transformer_weights=runs/base_tiny/final/transformer/model.safetensors \
  --set stage.transform_net_weights=runs/stage1_tiny/final/transform_net

# 5. The two models: nsarm-tiny, and the paper's stage-1-only ablation (stage-1 network, base transformer).
[ -f runs/nsarm-tiny-v1/model.safetensors ] || nsarm export-model runs/stage2_tiny runs/nsarm-tiny-v1 --name nsarm-tiny
[ -f runs/nsarm-tiny-stage1-only/model.safetensors ] || nsarm export-model runs/base_tiny \
  runs/nsarm-tiny-stage1-only --stage1 runs/stage1_tiny --name nsarm-tiny-stage1-only

# 6. CFW on the frozen v1 networks (one thread: its small convolutions do not gain from a second one; fp32,
# since bf16 autocast is far slower for them on CPUs without native bf16). Samples a latent cache first.
OMP_NUM_THREADS=1 nsarm train-cfw --config cfw_tiny --max-steps "$STEPS_CFW" --resume latest \
  --set stage.model=runs/nsarm-tiny-v1
# 6b. Two continuation rounds (v2.1): each ~20 min on one thread of an idle machine, 1500 steps, new latent cache.
OMP_NUM_THREADS=1 nsarm train-cfw --config cfw_tiny_ft --max-steps "$STEPS_CFW_FT" --resume latest \
  --set stage.model=runs/cfw_tiny/final/model
OMP_NUM_THREADS=1 nsarm train-cfw --config cfw_tiny_ft --max-steps "$STEPS_CFW_FT" --resume latest \
  --set run_dir=runs/cfw_tiny_ft2 --set seed=2 --set stage.model=runs/cfw_tiny_ft/final/model
sha256sum runs/cfw_tiny_ft2/final/model/{config.json,model.safetensors}
echo "To ship it: cp runs/cfw_tiny_ft2/final/model/{config.json,model.safetensors} nsarm_core/assets/nsarm-tiny/"
echo "and put the two sha256 above into nsarm_core/weights.py (MODELS['nsarm-tiny'])."

# 7. The default fidelity and the speck guard's threshold (on training photos), and the evaluation (the eval
# extra; see the scripts).
V2=runs/cfw_tiny_ft2/final/model bash scripts/tune_fidelity.sh
MODEL=runs/cfw_tiny_ft2/final/model bash scripts/tune_speck_guard.sh
V2=runs/cfw_tiny_ft2/final/model V2_PREV=runs/cfw_tiny/final/model bash scripts/evaluate_nsarm_tiny.sh
