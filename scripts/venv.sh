# Sourced by the other scripts: create .venv with Python 3.11 (or the python3 on PATH) if it is
# missing, install locolib with everything the book and the tests need, and activate it.
# Re-running is cheap: pip only checks what is already there.
set -euo pipefail
python_bin="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $python_bin"
  "$python_bin" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[book,test]"
# shellcheck disable=SC1091
source .venv/bin/activate
