#!/usr/bin/env bash
#! The main job on a shipped example: check the recipe, compile it through every stage that
#! exists with an IR dump per stage, and list the parameters of the float stage.
set -euo pipefail
cd "$(dirname "$0")/.."
recipe=${1:-examples/fashion_cnn.qrecipe}
qc=target/release/qc
out=out/$(basename "$recipe" .qrecipe)
echo "== qc check $recipe"
$qc check "$recipe"
echo "== qc compile $recipe --dump-ir $out/"
$qc compile "$recipe" --dump-ir "$out"
echo "== qc keys $recipe --stage float"
$qc keys "$recipe" --stage float
echo "== IR after the last stage ($(ls "$out" | tail -n 1))"
cat "$out/$(ls "$out" | tail -n 1)"
