#!/usr/bin/env bash
# Put in place everything a run needs. Safe to run again: each step checks first and
# does nothing when its work is already done.
#
#   ./setup.sh              all steps, in this order
#   ./setup.sh STEP...      upstream | patch | env | loadgen
#
#   upstream  vendor/inference at the pinned commit (the submodule's gitlink), as a
#             sparse, blob-filtered checkout of the folders the overlay uses; in a copy
#             without git, the patched tree the patch step recorded there, checked
#   patch     the patch series in patches/
#   env       the Python environment: .venv (default), the conda env 'retinanet' from
#             retinanet.yaml with ENV_KIND=conda, or with ENV_KIND=system the python3 on
#             PATH as it is (a container's): its torch and torchvision are checked, never
#             replaced, and only the packages it lacks are installed
#   loadgen   the mlcommons-loadgen wheel of the pinned upstream's loadgen/VERSION.txt
#
# Environment: ENV_KIND=venv|conda|system, VENV (default .venv), TORCH_INDEX_URL (a PyTorch
# wheel index, e.g. https://download.pytorch.org/whl/cu126 for an older CUDA driver),
# ONNXRUNTIME=onnxruntime|onnxruntime-gpu (default: onnxruntime-gpu where nvidia-smi
# lists a GPU), WHEELS (a folder of wheels: install from it only, without an index),
# SYSTEM_PACKAGES=run|all (ENV_KIND=system: what runs need, or requirements.txt's optional
# packages too).
set -euo pipefail
cd "$(dirname "$0")"

UPSTREAM=vendor/inference
SPARSE_PATHS=(vision/classification_and_detection loadgen calibration/openimages tools/submission compliance/TEST01)
ENV_KIND=${ENV_KIND:-venv}
VENV=${VENV:-.venv}
CONDA_ENV=retinanet
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
WHEELS=${WHEELS:-}
SYSTEM_PACKAGES=${SYSTEM_PACKAGES:-run}
ONNXRUNTIME=${ONNXRUNTIME:-$(nvidia-smi -L 2>/dev/null | grep -q '^GPU' && echo onnxruntime-gpu || echo onnxruntime)}

# torch and torchvision at their pins in requirements.txt, for TORCH_INDEX_URL
mapfile -t TORCH_PINS < <(grep -E '^(torch|torchvision)==' requirements.txt)

say() { echo "setup: $*"; }
die() {
  echo "setup: error: $*" >&2
  exit 1
}

env_python() {
  case $ENV_KIND in
    venv) echo "$VENV/bin/python" ;;
    conda) conda run -n "$CONDA_ENV" python -c 'import sys; print(sys.executable)' ;;
    system) command -v python3 || die "ENV_KIND=system but there is no python3 on PATH" ;;
    *) die "ENV_KIND=$ENV_KIND is not one of: venv, conda, system" ;;
  esac
}

# pip_install PYTHON REQUIREMENT...: from WHEELS only when it is set. Every other package
# already there is held at its version (a constraint), so that pip adds and never replaces:
# a container's torch, numpy or CUDA libraries stay as they are.
pip_install() {
  local python=$1 constraints status=0
  shift
  constraints=$(mktemp)
  "$python" - "$@" >"$constraints" <<'PY'
import importlib.metadata, re, sys
name = lambda text: re.sub(r"[-_.]+", "-", re.split(r"[=<>~!\[ ]", text)[0]).lower()
wanted = {name(requirement) for requirement in sys.argv[1:]}
seen = set(wanted)
for dist in importlib.metadata.distributions():  # the first of a name is the one imported
    if dist.metadata["Name"] and name(dist.metadata["Name"]) not in seen:
        seen.add(name(dist.metadata["Name"]))
        print(dist.metadata["Name"] + "==" + dist.version)
PY
  "$python" -m pip install --quiet --disable-pip-version-check --retries 1 --constraint "$constraints" \
    ${WHEELS:+--no-index --find-links "$WHEELS"} "$@" || status=$?
  rm -f "$constraints"
  return $status
}

step_upstream() {
  local pin url head output
  if [ ! -e .git ]; then
    # a copy without git (a GPU machine's): the pin is what the patch step recorded in
    # vendor/inference, and the record must match patches/ and the files it names
    python3 -m retinanet.patch_series recorded | sed 's/^/setup: /'
    return
  fi
  pin=$(git ls-files --stage -- "$UPSTREAM" | awk '$1 == "160000" { print $2 }')
  [ -n "$pin" ] || die "$UPSTREAM is not a submodule in this checkout: clone the project with git"
  url=$(git config -f .gitmodules "submodule.$UPSTREAM.url")
  if [ ! -e "$UPSTREAM/.git" ]; then
    if [ -n "$(ls -A "$UPSTREAM" 2>/dev/null)" ]; then
      die "$UPSTREAM holds files but no git checkout: move them away and run setup again"
    fi
    say "cloning $url into $UPSTREAM (sparse: ${SPARSE_PATHS[*]})"
    git submodule init -- "$UPSTREAM" >/dev/null 2>&1
    if ! output=$(git clone --quiet --filter=blob:none --no-checkout "$url" "$UPSTREAM" 2>&1); then
      # shellcheck disable=SC2001  # indenting every line is sed's job, not an expansion's
      sed 's/^/  /' <<<"$output" >&2
      rm -rf "$UPSTREAM"
      die "could not clone $url. Without a network, point git at a local mirror:
  git config --global url.<mirror path>.insteadOf $url
  git config --global protocol.file.allow always
then run 'make setup' again (README, 'Working offline')."
    fi
    git -C "$UPSTREAM" sparse-checkout set --cone "${SPARSE_PATHS[@]}"
    git -C "$UPSTREAM" -c advice.detachedHead=false checkout --quiet --detach "$pin" ||
      die "the pinned commit $pin is not in $url"
    git submodule absorbgitdirs -- "$UPSTREAM" >/dev/null 2>&1
    say "upstream at ${pin:0:12}"
    return
  fi
  head=$(git -C "$UPSTREAM" rev-parse HEAD)
  if [ "$head" != "$pin" ]; then
    die "$UPSTREAM is at ${head:0:12}, not at the pinned ${pin:0:12}. Run 'make unpatch' while the
old series still matches, then 'git -C $UPSTREAM checkout --detach $pin' (fetch first if it is missing)."
  fi
  if [ "$(git -C "$UPSTREAM" sparse-checkout list 2>/dev/null | sort)" != "$(printf '%s\n' "${SPARSE_PATHS[@]}" | sort)" ]; then
    git -C "$UPSTREAM" sparse-checkout set --cone "${SPARSE_PATHS[@]}"
  fi
  say "upstream at ${pin:0:12}: up to date"
}

step_patch() {
  python3 -m retinanet.patch_series apply | sed 's/^/setup: /'
}

# requirements.txt pins the CPU package; onnxruntime-gpu takes its place at the same
# version. Both install into onnxruntime/: when the other one is there too, its files
# have been overwritten in part, so both go and the chosen one is installed afresh.
install_onnxruntime() {
  local python=$1 version other package
  version=$(sed -n 's/^onnxruntime==//p' requirements.txt)
  other=onnxruntime-gpu package=onnxruntime
  # [cuda,cudnn]: CUDA 13 and cuDNN 9 as pip packages, the ones the torch wheel uses
  [ "$ONNXRUNTIME" = onnxruntime-gpu ] && other=onnxruntime package="onnxruntime-gpu[cuda,cudnn]"
  "$python" -m pip show --quiet "$other" 2>/dev/null || return 0
  say "installing $ONNXRUNTIME==$version in place of $other"
  "$python" -m pip uninstall -qq -y onnxruntime onnxruntime-gpu # -qq: no "Skipping ... not installed"
  "$python" -m pip install --quiet --disable-pip-version-check "$package==$version"
}

step_env() {
  local stamp want python
  case $ONNXRUNTIME in
    onnxruntime | onnxruntime-gpu) ;;
    *) die "ONNXRUNTIME=$ONNXRUNTIME is not one of: onnxruntime, onnxruntime-gpu" ;;
  esac
  want=$(cat requirements.txt retinanet.yaml | sha256sum | cut -c1-16)-${TORCH_INDEX_URL:-pypi}-$ONNXRUNTIME
  case $ENV_KIND in
    venv)
      stamp=$VENV/.retinanet-requirements
      if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        say "environment $VENV: up to date"
        return
      fi
      [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" || die "python3 -m venv failed: install python3-venv"
      python=$VENV/bin/python
      if [ -n "$TORCH_INDEX_URL" ]; then
        say "installing torch and torchvision from $TORCH_INDEX_URL"
        "$python" -m pip install --quiet --index-url "$TORCH_INDEX_URL" "${TORCH_PINS[@]}"
      fi
      say "installing requirements.txt into $VENV (a few minutes the first time)"
      "$python" -m pip install --quiet --disable-pip-version-check -r requirements.txt
      install_onnxruntime "$python"
      echo "$want" >"$stamp"
      ;;
    conda)
      command -v conda >/dev/null || die "ENV_KIND=conda but conda is not on PATH"
      python=$(env_python 2>/dev/null || true)
      stamp=${python%/bin/python}/.retinanet-requirements
      if [ -n "$python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        say "conda env $CONDA_ENV: up to date"
        return
      fi
      if [ -n "$python" ]; then
        conda env update --quiet -n "$CONDA_ENV" -f retinanet.yaml --prune
      else
        conda env create --quiet -f retinanet.yaml
      fi
      python=$(env_python)
      if [ -n "$TORCH_INDEX_URL" ]; then
        "$python" -m pip install --quiet --index-url "$TORCH_INDEX_URL" "${TORCH_PINS[@]}"
      fi
      install_onnxruntime "$python"
      echo "$want" >"${python%/bin/python}/.retinanet-requirements"
      ;;
    system)
      step_system_env
      return
      ;;
    *) die "ENV_KIND=$ENV_KIND is not one of: venv, conda, system" ;;
  esac
  say "environment ready: $python"
}

# ENV_KIND=system: the python3 on PATH as it is. Its torch and torchvision must import; of
# requirements.txt (without them) and the pinned LoadGen, only what it lacks is installed.
step_system_env() {
  local python loadgen="" check missing=() version output tmp
  case $SYSTEM_PACKAGES in
    run | all) ;;
    *) die "SYSTEM_PACKAGES=$SYSTEM_PACKAGES is not one of: run, all" ;;
  esac
  [ -z "$WHEELS" ] || [ -d "$WHEELS" ] || die "WHEELS=$WHEELS is not a folder"
  python=$(env_python)
  [ -f "$UPSTREAM/loadgen/VERSION.txt" ] && loadgen=$(tr -d '[:space:]' <"$UPSTREAM/loadgen/VERSION.txt")
  check=("$python" -m retinanet.system_env check ${loadgen:+--loadgen "$loadgen"})
  [ "$SYSTEM_PACKAGES" = all ] && check+=(--all)
  tmp=$(mktemp)
  # stderr: the facts about torch, or why it is not usable; stdout: what is missing
  output=$("${check[@]}" 2>&1 >"$tmp") || {
    rm -f "$tmp"
    die "ENV_KIND=system: $output"
  }
  mapfile -t missing <"$tmp"
  rm -f "$tmp"
  say "$output"
  if [ ${#missing[@]} -eq 0 ]; then
    say "environment $python (system): nothing missing"
    return
  fi
  say "installing what $python lacks${WHEELS:+, from $WHEELS}: ${missing[*]}"
  "$python" -m pip --version >/dev/null 2>&1 || die "$python lacks ${missing[*]} and has no pip to install them"
  if ! output=$(pip_install "$python" "${missing[@]}" 2>&1); then
    # shellcheck disable=SC2001  # indenting every line is sed's job, not an expansion's
    sed 's/^/  /' <<<"$output" >&2
    version=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    die "$python lacks what runs need, and pip could not install it (no network?${WHEELS:+ not all in $WHEELS?}):
$(printf '  %s\n' "${missing[@]}")
Bring them as wheels in a folder: on a machine with a network, for Python $version on this platform,
  python3 -m pip download --only-binary=:all: --python-version $version --dest wheels ${missing[*]}
then copy the folder here and run: make setup ENV_KIND=system WHEELS=wheels
(or set PIP_FIND_LINKS=wheels PIP_NO_INDEX=1 for pip itself)"
  fi
  mapfile -t missing < <("${check[@]}" 2>/dev/null)
  [ ${#missing[@]} -eq 0 ] || die "pip ran, but $python still lacks: ${missing[*]}"
  say "environment $python (system): ready"
}

step_loadgen() {
  local python want have
  python=$(env_python)
  [ -f "$UPSTREAM/loadgen/VERSION.txt" ] || die "$UPSTREAM/loadgen/VERSION.txt missing: run './setup.sh upstream' first"
  want=$(tr -d '[:space:]' <"$UPSTREAM/loadgen/VERSION.txt")
  have=$("$python" -c 'import importlib.metadata as m; print(m.version("mlcommons-loadgen"))' 2>/dev/null || true)
  if [ "$have" != "$want" ]; then
    say "installing mlcommons-loadgen==$want (the LoadGen of the pinned upstream)"
    pip_install "$python" "mlcommons-loadgen==$want" ||
      die "could not install mlcommons-loadgen==$want into $python (without a network: WHEELS=<folder of wheels>)"
  fi
  "$python" -c "
import importlib.metadata as m, mlperf_loadgen
assert m.version('mlcommons-loadgen') == '$want', m.version('mlcommons-loadgen')
mlperf_loadgen.TestSettings()
" || die "mlperf_loadgen does not import at version $want in $python"
  say "LoadGen $want: imports"
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(upstream patch env loadgen)
for step in "${steps[@]}"; do
  case $step in
    upstream | patch | env | loadgen) "step_$step" ;;
    *) die "unknown step '$step': use upstream, patch, env or loadgen" ;;
  esac
done
