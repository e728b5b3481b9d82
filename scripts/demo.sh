#!/usr/bin/env bash
#! The main job on a shipped example. For fashion_cnn (the default): train the float model
#! through libtorch, quantize it (PTQ: calibrate on Fashion-MNIST, convert, lower to a .qmodel,
#! with an IR dump per stage), fine-tune it with quantization-aware training and convert that,
#! evaluate FP32, INT8-PTQ and INT8-QAT on the 10,000 test images and print one table. For any
#! other recipe: check it, show its plan, compile it with dumps and show what became of its
#! float keys. Overrides: QC (the qc binary), DEMO_OUT (the output folder), DEMO_TRAIN_ARGS and
#! DEMO_QAT_ARGS (extra `qc train` arguments, e.g. `--epochs 1 --max-samples 4000`).
set -euo pipefail
cd "$(dirname "$0")/.."
recipe=${1:-examples/fashion_cnn.qrecipe}
qc=${QC:-target/release/qc}
name=$(basename "$recipe" .qrecipe)
out=${DEMO_OUT:-out/$name}
data=/usr/share/datasets/fashion-mnist
mkdir -p "$out"

if [ "$name" != fashion_cnn ]; then
  echo "== qc check $recipe"; $qc check "$recipe"
  echo "== qc plan $recipe"; $qc plan "$recipe"
  echo "== qc compile $recipe --dump-ir $out/ -o $out.qmodel"; $qc compile "$recipe" --dump-ir "$out" -o "$out.qmodel"
  echo "== qc keys $recipe --stage quantized"; $qc keys "$recipe" --stage quantized
  exit 0
fi

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

echo "== 1. float training: qc train $recipe -o $out/fp32.safetensors"
t0=$(now)
$qc train "$recipe" -o "$out/fp32.safetensors" ${DEMO_TRAIN_ARGS:-} | tee "$out/train.log"
t1=$(now)
fp32=$(sed -n 's/.*test accuracy \([0-9.]*\)%.*/\1/p' "$out/train.log" | tail -n 1)
epochs=$(sed -n 's/.*: \([0-9]*\) epoch(s).*/\1/p' "$out/train.log" | head -n 1)
device=$(sed -n 's/.*, \(libtorch [A-Z]*\)$/\1/p' "$out/train.log" | head -n 1)

echo "== 2. post-training quantization: qc compile (trained weights) --dump-ir $out/ir -o $out/int8-ptq.qmodel"
cat > "$out/trained.qrecipe" <<RECIPE
include "$(pwd)/$recipe"
weights "fp32.safetensors"
RECIPE
$qc compile "$out/trained.qrecipe" --dump-ir "$out/ir" -o "$out/int8-ptq.qmodel"
t2=$(now)

echo "== 3. int8 evaluation: qc run on the 10,000 test images"
$qc run "$out/int8-ptq.qmodel" --input "$data/t10k-images-idx3-ubyte.gz" \
  --labels "$data/t10k-labels-idx1-ubyte.gz" --bench 3 | tee "$out/run.log"
t3=$(now)
ptq=$(sed -n 's/^accuracy: \([0-9.]*\)%.*/\1/p' "$out/run.log")
ms=$(sed -n 's/^bench: .* median \([0-9.]*\) ms\/run.*/\1/p' "$out/run.log")

echo "== 4. quantization-aware training: qc train $out/trained.qrecipe --qat -o $out/qat.safetensors"
$qc train "$out/trained.qrecipe" --qat -o "$out/qat.safetensors" ${DEMO_QAT_ARGS:-} | tee "$out/qat.log"
t4=$(now)
cat > "$out/qat.qrecipe" <<RECIPE
include "$(pwd)/$recipe"
weights "qat.safetensors"
RECIPE
echo "== 5. convert the QAT model: qc compile $out/qat.qrecipe --qat --dump-ir $out/ir-qat -o $out/int8-qat.qmodel"
$qc compile "$out/qat.qrecipe" --qat --dump-ir "$out/ir-qat" -o "$out/int8-qat.qmodel"
t5=$(now)
echo "== 6. int8 evaluation of the QAT model: qc run on the 10,000 test images"
$qc run "$out/int8-qat.qmodel" --input "$data/t10k-images-idx3-ubyte.gz" \
  --labels "$data/t10k-labels-idx1-ubyte.gz" | tee "$out/run-qat.log"
t6=$(now)
qat=$(sed -n 's/^accuracy: \([0-9.]*\)%.*/\1/p' "$out/run-qat.log")
qat_epochs=$(sed -n 's/.*: \([0-9]*\) epoch(s).*/\1/p' "$out/qat.log" | head -n 1)

echo
echo "fashion_cnn on Fashion-MNIST (10,000 test images)"
printf '%-10s %9s  %s\n' model accuracy time
printf '%-10s %8s%%  %ss training (epochs: %s, %s)\n' FP32 "$fp32" "$(secs "$t0" "$t1")" "$epochs" "$device"
printf '%-10s %8s%%  %ss compile + calibration, %ss evaluation; %s ms per 10,000-image batch\n' \
  INT8-PTQ "$ptq" "$(secs "$t1" "$t2")" "$(secs "$t2" "$t3")" "$ms"
printf '%-10s %8s%%  %ss QAT (epochs: %s, %s), %ss convert, %ss evaluation\n' \
  INT8-QAT "$qat" "$(secs "$t3" "$t4")" "$qat_epochs" "$device" "$(secs "$t4" "$t5")" "$(secs "$t5" "$t6")"
