#!/usr/bin/env bash
#! The main job on a shipped example: check the recipe, show its quantization plan, compile it
#! through every stage with an IR dump per stage into a .qmodel, show what became of the float
#! keys, and run the int8 model on the Fashion-MNIST test set.
set -euo pipefail
cd "$(dirname "$0")/.."
recipe=${1:-examples/fashion_cnn.qrecipe}
qc=target/release/qc
name=$(basename "$recipe" .qrecipe)
out=out/$name
data=/usr/share/datasets/fashion-mnist
echo "== qc check $recipe"
$qc check "$recipe"
echo "== qc plan $recipe"
$qc plan "$recipe"
echo "== qc compile $recipe --dump-ir $out/ -o $out.qmodel"
$qc compile "$recipe" --dump-ir "$out" -o "$out.qmodel"
echo "== qc keys $recipe --stage quantized"
$qc keys "$recipe" --stage quantized
if [ "$name" = fashion_cnn ]; then
  echo "== qc run $out.qmodel on the 10,000 Fashion-MNIST test images"
  echo "   (no trained weights yet: training is an open issue, so the accuracy is chance level)"
  $qc run "$out.qmodel" --input "$data/t10k-images-idx3-ubyte.gz" --labels "$data/t10k-labels-idx1-ubyte.gz" --bench 5
fi
echo "== IR after the last stage ($(ls "$out" | tail -n 1))"
cat "$out/$(ls "$out" | tail -n 1)"
