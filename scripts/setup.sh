#!/usr/bin/env bash
# Create or reuse the virtual environment .venv/ in the repository and install
# rc_nbkit into it. PyTorch 2.13.0 goes in first: that version has a CPU wheel
# on local disk here, whereas an unpinned torch would pull a CUDA build of
# several GB. The package itself only requires a torch range, which 2.13.0
# satisfies, so pip installs nothing more for it.
#
# Usage: bash scripts/setup.sh [EXTRAS]   (default extras: dev,offline-models,ct2)
# A second run with unchanged pyproject.toml installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
extras=${1:-dev,offline-models,ct2}
torch_version=${RC_NBKIT_TORCH:-2.13.0}
venv=.venv
stamp=$venv/.rc_nbkit-setup

fingerprint="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16) extras=$extras torch=$torch_version"

install_system_packages() {
  # espeak-ng synthesises the demo's training speech. The set-up installs it
  # where it can (root with apt-get); elsewhere the demo reports what it skipped.
  local missing=()
  command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
  if [[ ${RC_NBKIT_BROWSER_TESTS:-0} == 1 ]]; then
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
  fi
  [[ ${#missing[@]} -eq 0 ]] && return 0
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "set-up: installing system packages: ${missing[*]}"
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
      || echo "set-up: WARNING: apt-get could not install ${missing[*]}; the steps that need them will be skipped"
  else
    echo "set-up: WARNING: missing ${missing[*]} (install them with your system's package manager); the steps that need them will be skipped"
  fi
}

install_browser_driver() {
  # playwright-core drives Debian's chromium in the browser tests; it never downloads a browser.
  [[ ${RC_NBKIT_BROWSER_TESTS:-0} == 1 ]] || return 0
  [[ -f tests/browser/node_modules/playwright-core/package.json ]] && return 0
  command -v npm >/dev/null 2>&1 || { echo "set-up: WARNING: npm missing; browser tests will be skipped"; return 0; }
  echo "set-up: installing playwright-core for the browser tests"
  if ! npm ci --prefix tests/browser --no-audit --no-fund --silent --cache "$PWD/.cache/npm-cache" >/dev/null 2>&1; then
    rm -rf tests/browser/node_modules
    echo "set-up: WARNING: npm ci failed in tests/browser; browser tests will be skipped"
  fi
}

install_system_packages
install_browser_driver

if [[ -f $stamp && "$(cat "$stamp")" == "$fingerprint" ]] && "$venv/bin/python" -c "import rc_nbkit, torch" 2>/dev/null; then
  echo "set-up: $venv is up to date (nothing to install)"
  exit 0
fi

if [[ ! -x $venv/bin/python ]]; then
  echo "set-up: creating $venv with $($python --version)"
  "$python" -m venv "$venv"
fi

echo "set-up: installing torch==$torch_version"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$torch_version"
echo "set-up: installing rc_nbkit[$extras] (editable)"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[$extras]"
install_git_hooks() {
  # nbdev's notebook diff and merge drivers (.gitconfig, .gitattributes), plus a
  # pre-commit hook that rejects notebooks that nbdev-clean would change.
  # HOME points into .cache so that nbdev's Jupyter save hook lands there, not in ~.
  [[ -d .git ]] || { echo "set-up: not a git checkout; git hooks not installed"; return 0; }
  mkdir -p .cache/home
  HOME=$PWD/.cache/home "$venv/bin/nbdev-install-hooks" >/dev/null 2>&1 \
    || echo "set-up: WARNING: nbdev-install-hooks failed"
  cat > .git/hooks/pre-commit <<'HOOK'
#!/usr/bin/env bash
# Installed by scripts/setup.sh: commit only notebooks that nbdev-clean leaves unchanged.
staged=$(git diff --cached --name-only --diff-filter=ACM -- '*.ipynb')
[[ -z $staged ]] && exit 0
.venv/bin/nbdev-clean >/dev/null 2>&1 || exit 0
changed=$(git diff --name-only -- $staged)
if [[ -n $changed ]]; then
  echo "pre-commit: nbdev-clean changed these notebooks; review and 'git add' them again:"
  echo "$changed"
  exit 1
fi
HOOK
  chmod +x .git/hooks/pre-commit
}
install_git_hooks

echo "$fingerprint" > "$stamp"
echo "set-up: done"
