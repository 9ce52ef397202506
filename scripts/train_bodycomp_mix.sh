#!/usr/bin/env bash
# Train tissue network 2.0 (sarcopenia-l3-tissue-2d): fine-tune the phantom-trained card on "bodycomp-mix",
# T12-L5 slices of real anatomy label maps (TotalSegmentator; the body layers added, everything that must not
# matter randomised) mixed with L3 phantoms (mskseg.synth.bodycomp_source). Needs the label maps in
# $MSKSEG_ANATOMY_DIR or ../shared/data/totalseg-labelmaps. CPU: 2 cores, see the card for the time it took.
# The base is card 1.1.0 (procedural L3 phantoms): OUT/stage3 of scripts/train_l3_tissue.sh, or the card of
# commit c2f6420 (git show c2f6420:Resources/Models/sarcopenia-l3-tissue-2d/<file> for the card and weights).
# Card 2.0.0 took 1756 s on 2 CPU cores (36 x 200 steps, pool of 900 samples made in the first epoch).
# usage: bash scripts/train_bodycomp_mix.sh OUT_DIR BASE_CARD [extra mskseg train options]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/train_bodycomp_mix.sh OUT_DIR BASE_CARD [options]}
base=${2:?usage: scripts/train_bodycomp_mix.sh OUT_DIR BASE_CARD [options] (BASE_CARD: tissue card 1.1.0)}
shift 2
name=sarcopenia-l3-tissue-2d
.venv/bin/mskseg train --synthetic bodycomp-mix --synthetic-val 48 --synthetic-pool 900 \
  --fine-tune "$base" --name "$name" --task sarcopenia --dimensions 2d \
  --spacing 1.0,1.0 --window=-250,250 --patch-size 256,256 --steps-per-epoch 200 --batch-size 8 \
  --epochs 36 --lr 1e-3 --validate-every 6 --patience 0 --threads 2 --seed 3 --licence Apache-2.0 --version 2.0.0 \
  --title "Body composition tissues T12-L5 (2D, trained on real anatomy and phantoms)" \
  --description "Skeletal muscle, subcutaneous, visceral and intermuscular adipose tissue on an axial CT slice from T12 to L5. Fine-tuned from card 1.1.0 (procedural L3 phantoms) on bodycomp-mix: slices of two real TotalSegmentator label maps (s0327, s0328; Wasserthal et al., CC BY 4.0) with the body layers added and intensities, contrast phase, noise, resolution and body build randomised, mixed 65/35 with L3 phantoms. Use with the BODYCOMP HU windows." \
  --out "$out" "$@"
echo "the trained card: $out/$name.card.json"
