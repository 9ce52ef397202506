#!/usr/bin/env bash
# Train the muscle-group network (sarcopenia-muscle-groups-2d: psoas, paraspinal, abdominal wall) from scratch on
# "bodycomp-groups": the bodycomp-mix slices (T12-L5 of real TotalSegmentator label maps with the body layers added,
# mixed with L3 phantoms) labelled with the real iliopsoas / autochthon (+ quadratus lumborum) masks and the added
# abdominal wall, on their muscle pixels. Needs the label maps in $MSKSEG_ANATOMY_DIR or
# ../shared/data/totalseg-labelmaps. CPU: 2 cores; the card records the time it took.
# usage: bash scripts/train_muscle_groups.sh OUT_DIR [extra mskseg train options]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/train_muscle_groups.sh OUT_DIR [options]}
shift
name=sarcopenia-muscle-groups-2d
.venv/bin/mskseg train --synthetic bodycomp-groups --synthetic-val 48 --synthetic-pool 700 \
  --name "$name" --task sarcopenia --dimensions 2d --architecture unet-small \
  --spacing 1.0,1.0 --window=-250,250 --patch-size 256,256 --steps-per-epoch 200 --batch-size 8 \
  --epochs 30 --lr 2e-3 --validate-every 6 --patience 0 --threads 2 --seed 4 --licence Apache-2.0 --version 1.0.0 \
  --title "Muscle groups T12-L5 (2D): psoas, paraspinal, abdominal wall" \
  --description "Psoas, paraspinal (erector spinae, multifidus, quadratus lumborum) and abdominal wall muscles on an axial CT slice from T12 to L5, used by SarcopeniaSeg on the skeletal muscle it segments. Trained on bodycomp-groups: slices of two real TotalSegmentator label maps (s0327, s0328; Wasserthal et al., CC BY 4.0) with the body layers added and intensities, contrast phase, noise, resolution and body build randomised, mixed 65/35 with L3 phantoms." \
  --out "$out" "$@"
echo "the trained card: $out/$name.card.json"
