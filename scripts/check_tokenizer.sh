#!/usr/bin/env bash
# Compares our tokenizer with the Hugging Face reference on a generated >= 1 MB corpus.
#   check_tokenizer.sh LONGREAD_TOKENIZE_BINARY [MODEL.gguf] [WORK_DIR]
# Exit 0: ids identical; 1: mismatch or failure; 77: skipped (no model file or no .venv).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
tool="$1"
model="${2:-$repo/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
work="${3:-$(mktemp -d)}"
python="$repo/.venv/bin/python"

if [[ ! -f "$model" ]]; then echo "SKIP: no model file at $model"; exit 77; fi
if [[ ! -x "$python" ]]; then echo "SKIP: no Python virtualenv at $repo/.venv"; exit 77; fi

rm -rf "$work/corpus"
"$python" "$repo/scripts/make_tokenizer_corpus.py" "$work/corpus"
"$python" "$repo/scripts/tokenizer_oracle.py" --model "$model" --corpus "$work/corpus" \
  --out "$work/expected.txt"
"$tool" --model "$model" --corpus "$work/corpus" --out "$work/actual.txt"
"$python" "$repo/scripts/tokenizer_oracle.py" --model "$model" \
  --compare "$work/expected.txt" "$work/actual.txt"

# The other models' pre-tokenizers: piece boundaries against the reference regexes.
for pre in gpt2 llama-bpe qwen2; do
  "$python" "$repo/scripts/tokenizer_oracle.py" --pieces "$pre" --corpus "$work/corpus" \
    --out "$work/pieces_expected_$pre.txt"
  "$tool" --pieces "$pre" --corpus "$work/corpus" --out "$work/pieces_actual_$pre.txt"
  if ! cmp -s "$work/pieces_expected_$pre.txt" "$work/pieces_actual_$pre.txt"; then
    echo "MISMATCH in $pre pre-tokenizer pieces (byte lengths), first differing line:"
    diff "$work/pieces_expected_$pre.txt" "$work/pieces_actual_$pre.txt" | head -4 | cut -c1-300
    exit 1
  fi
  echo "$pre pre-tokenizer pieces identical"
done
