# Shared by scripts/demo and scripts/test (sourced, not run): everything a fresh Debian/Ubuntu machine needs.
#   apt_install PKG...   install the Debian packages that are missing (as root, or through sudo)
#   setup_venv EXTRAS    make .venv (python3 -m venv) and install faultlab into it, editable, with EXTRAS
# Root of the checkout is the current directory. Nothing is installed outside .venv but Debian packages.

export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

section() { printf '\n==> %s\n' "$*" >&2; }

as_root() {
  if [[ $(id -u) == 0 ]]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else echo "need root (or sudo) to run: $*" >&2; return 1
  fi
}

apt_install() {
  local missing=() pkg
  for pkg in "$@"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]]; then
      missing+=("$pkg")
    fi
  done
  if ((${#missing[@]} == 0)); then
    echo "Debian packages present: $*" >&2
    return 0
  fi
  if ! command -v apt-get >/dev/null; then
    echo "missing packages (${missing[*]}) and no apt-get: install them with your system's package manager" >&2
    return 1
  fi
  echo "installing Debian packages: ${missing[*]}" >&2
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

setup_venv() {
  local extras="$1"
  if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "faultlab needs Python 3.11 or newer as python3 (found: $(python3 --version 2>&1 || echo none))" >&2
    return 1
  fi
  if [[ ! -x .venv/bin/python ]]; then
    section "virtualenv .venv ($(python3 --version))"
    # --system-site-packages: reuse what the machine already has; faultlab and the rest go into .venv
    if ! python3 -m venv --system-site-packages .venv 2>/dev/null; then
      rm -rf .venv
      apt_install python3-venv python3-pip
      python3 -m venv --system-site-packages .venv
    fi
  fi
  section "faultlab$extras into .venv"
  .venv/bin/python -m pip install -q -e ".$extras"
}
