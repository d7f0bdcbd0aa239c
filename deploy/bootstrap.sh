#!/usr/bin/env bash
# Set hoist up on a Debian machine, then run the demo, the test suite or the benchmarks.
#
#   bash deploy/bootstrap.sh demo            # the main job
#   bash deploy/bootstrap.sh test [ARGS...]  # pytest, ARGS passed through
#   bash deploy/bootstrap.sh bench [ARGS...] # the benchmark suite (python -m benchmarks ARGS)
#   bash deploy/bootstrap.sh compat composer [ARGS...]
#                                            # hoist against the real mosaicml release it
#                                            # follows, in its own venv (tests/compat/)
#
# Idempotent: Debian packages are installed only when missing, the virtual
# environment (.venv, or $HOIST_VENV) is made once, and the Python package is
# reinstalled only when pyproject.toml changes.
set -euo pipefail

mode=${1:-}
case "$mode" in
  demo|test|bench) shift ;;
  compat)
    # A third-party release hoist adapts to, with the pins it needs (mosaicml
    # 0.32.1 wants torch<2.7.1, the test extra has 2.13): a venv of its own.
    peer=${2:-}
    case "$peer" in
      composer) shift 2 ;;
      *) echo "usage: bash deploy/bootstrap.sh compat composer [pytest args...]" >&2; exit 2 ;;
    esac ;;
  *) echo "usage: bash deploy/bootstrap.sh demo|test|bench|compat [args...]" >&2; exit 2 ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ "$mode" = compat ]; then
  venv=${HOIST_VENV:-$PWD/.venv-compat-$peer}
else
  venv=${HOIST_VENV:-$PWD/.venv}
fi
python=${PYTHON:-python3}

# Debian packages: the services hoist runs (Redis) and the tests start (sshd),
# and for the tests only, the browser the Flower test drives (chromium),
# systemd-analyze for checking deploy/systemd (systemd) and `ip netns` for
# the multi-host test (iproute2).
debs=(redis-server openssh-server openssh-client)
[ "$mode" = test ] && debs+=(chromium systemd iproute2)
missing=()
for deb in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "install ok installed" || missing+=("$deb")
done
# A Debian Python without ensurepip needs python3-venv to make the venv.
if [ ! -x "$venv/bin/python" ] && ! "$python" -c "import ensurepip, venv" 2>/dev/null; then
  missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "hoist needs Debian packages: ${missing[*]}. Install them as root:" >&2
    echo "  apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "==> installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "==> creating the virtual environment $venv"
  "$python" -m venv "$venv"
fi

case "$mode" in
  test) extra="[test]" ;;
  bench) extra="[bench]" ;;
  compat) extra="[compat-$peer]" ;;
  *) extra="" ;;
esac
stamp="$venv/.hoist-installed$extra"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "==> installing hoist$extra into $venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  # setuptools prints an "Editable installation ... be careful with folders"
  # banner as a Python warning from its build backend, even under --quiet.
  # Ignore that one warning by its message: other warnings and every error
  # still show, and a failed install still stops this script.
  PYTHONWARNINGS="${PYTHONWARNINGS:+$PYTHONWARNINGS,}ignore:Editable installation" \
    "$venv/bin/python" -m pip install --quiet -e ".$extra"
  echo "$want" > "$stamp"
fi

export PATH="$venv/bin:$PATH"
if [ "$mode" = test ]; then
  exec "$venv/bin/python" -m pytest "$@"
elif [ "$mode" = bench ]; then
  exec "$venv/bin/python" -m benchmarks "$@"
elif [ "$mode" = compat ]; then
  # tests/conftest.py collects tests/compat/ only where the peer is installed.
  exec "$venv/bin/python" -m pytest -p no:cacheprovider "tests/compat/test_$peer.py" "$@"
else
  # Starts (or reuses) the embedded default: Redis, workers and Flower under
  # .hoist/; `hoist down` stops it. PATH above is this script's only: say how
  # a new shell finds hoist (the README's Quickstart starts from there).
  hoist demo
  echo "==> hoist is in $venv: run '. $venv/bin/activate' to put it on PATH (README.md, Quickstart)"
fi
