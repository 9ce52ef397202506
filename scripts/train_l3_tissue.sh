#!/usr/bin/env bash
# Train the 2D body-composition tissue network (skeletal muscle, SAT, VAT, IMAT at L3) on procedural L3 phantoms,
# CPU-friendly: a pool of generated phantoms, a small U-Net at 1 mm, 256 px crops. Three stages, each fine-tuning
# the previous one on a fresh phantom pool (new seed) with a lower peak learning rate:
#   1. 16 x 200 steps, 400 phantoms of seed 0, lr 2e-3   (1118 s on 2 CPU cores)
#   2. 24 x 200 steps, 600 phantoms of seed 1, lr 1e-3   (2619 s, shared with other work)
#   3. 24 x 200 steps, 600 phantoms of seed 2, lr 7e-4   (2489 s, shared with other work)
# The shipped card 1.1.0 is stage 3. Its stages 1 and 2 ran on phantom generator 1 (no large liver or spleen);
# this script runs all three on the current generator.
# usage: bash scripts/train_l3_tissue.sh OUT_DIR [extra mskseg train options for every stage]
# Run it alone: other jobs on the same cores slow each epoch several times over.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/train_l3_tissue.sh OUT_DIR [options]}
shift
name=sarcopenia-l3-tissue-2d
common=(--synthetic l3-phantom --synthetic-val 32 --name "$name" --task sarcopenia --dimensions 2d
  --spacing 1.0,1.0 --window=-250,250 --patch-size 256,256 --steps-per-epoch 200 --batch-size 8
  --patience 0 --threads 2 --licence Apache-2.0
  --title "L3 body composition tissues (2D, synthetic-trained)"
  --description "Skeletal muscle, subcutaneous, visceral and intermuscular adipose tissue on an axial CT slice at L3. Trained only on procedural synthetic L3 phantoms; use with the BODYCOMP HU windows.")
.venv/bin/mskseg train "${common[@]}" --architecture unet-small --synthetic-pool 400 --epochs 16 --lr 2e-3 \
  --validate-every 4 --seed 0 --out "$out/stage1" "$@"
.venv/bin/mskseg train "${common[@]}" --fine-tune "$out/stage1/$name.card.json" --synthetic-pool 600 --epochs 24 \
  --lr 1e-3 --validate-every 6 --seed 1 --out "$out/stage2" "$@"
.venv/bin/mskseg train "${common[@]}" --fine-tune "$out/stage2/$name.card.json" --synthetic-pool 600 --epochs 24 \
  --lr 7e-4 --validate-every 6 --seed 2 --out "$out/stage3" "$@"
echo "the trained card: $out/stage3/$name.card.json"
