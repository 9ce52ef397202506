#!/usr/bin/env bash
# Train the 2D body-composition tissue network (skeletal muscle, SAT, VAT, IMAT at L3) on procedural L3 phantoms,
# CPU-friendly: a pool of generated phantoms, a small U-Net at 1 mm, 256 px crops.
# usage: bash scripts/train_l3_tissue.sh OUT_DIR [extra mskseg train options]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/train_l3_tissue.sh OUT_DIR [options]}
shift
exec .venv/bin/mskseg train --synthetic l3-phantom --synthetic-pool 400 --synthetic-val 32 \
  --name sarcopenia-l3-tissue-2d --task sarcopenia --dimensions 2d --spacing 1.0,1.0 --window=-250,250 \
  --patch-size 256,256 --architecture unet-small --epochs 16 --steps-per-epoch 200 --batch-size 8 \
  --lr 2e-3 --validate-every 4 --patience 0 --seed 0 --threads 2 \
  --title "L3 body composition tissues (2D, synthetic-trained)" \
  --description "Skeletal muscle, subcutaneous, visceral and intermuscular adipose tissue on an axial CT slice at L3. Trained only on procedural synthetic L3 phantoms; apply the BODYCOMP HU windows afterwards." \
  --licence Apache-2.0 --out "$out" "$@"
