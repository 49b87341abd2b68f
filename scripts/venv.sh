# Sourced by the other scripts: create .venv with Python 3.11 (or the python3 on PATH) if it is
# missing, install the exact versions of requirements-lock.txt and then locolib itself, and
# activate it. Re-running is instant until the lock file or pyproject.toml changes.
set -euo pipefail
python_bin="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $python_bin"
  "$python_bin" -m venv .venv
fi
stamp=.venv/.locolib-installed
wanted="$(cat requirements-lock.txt pyproject.toml | cksum)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
  pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
  # The lock is resolved for Python 3.11 on Linux x86-64; elsewhere pip picks versions itself.
  if [ "$(uname -sm)" = "Linux x86_64" ] && .venv/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    "${pip[@]}" -r requirements-lock.txt
    "${pip[@]}" --no-deps -e .
  else
    echo "not Linux x86-64 with Python 3.11: installing unpinned versions, not requirements-lock.txt"
    "${pip[@]}" -e ".[book,test]"
  fi
  echo "$wanted" > "$stamp"
fi
# shellcheck disable=SC1091
source .venv/bin/activate
