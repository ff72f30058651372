#!/usr/bin/env bash
# Drift check (reporting, never blocking): install TORCH_SPEC and then the newest releases of the
# package's direct dependencies, without requirements/constraints.txt, into a separate virtualenv
# (LATEST_VENV, default .venv-latest), run the test suite there (pytest arguments: "$@") and print
# which direct dependencies moved past the pin and what failed. Always exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
VENV=${LATEST_VENV:-.venv-latest}
PIN=requirements/constraints.txt
py="$VENV/bin/python"
log="$VENV/pytest.log"
pip_install() { "$py" -m pip install -q --disable-pip-version-check "$@"; }

report_install_failure() {
    echo "=== test-latest: installing the newest releases FAILED ($1); see the pip output above ==="
    exit 0
}

"$PYTHON" -m venv "$VENV" || report_install_failure "venv"
torch_args=("$TORCH_SPEC")
[ -z "${TORCH_INDEX:-}" ] || torch_args+=(--extra-index-url "$TORCH_INDEX")
pip_install "${torch_args[@]}" || report_install_failure "$TORCH_SPEC"
# keep the torch just installed while everything else goes to its newest release
"$py" -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$VENV/torch.txt"
pip_install --upgrade --upgrade-strategy eager -c "$VENV/torch.txt" -e ".[test]" \
    || report_install_failure "pip install --upgrade -e .[test]"

OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} "$py" -m pytest -p no:cacheprovider "$@" > "$log" 2>&1
status=$?

echo
echo "=== test-latest: direct dependencies, newest release installed vs requirements/constraints.txt ==="
"$py" - "$PIN" <<'PY'
import re
import sys
from importlib import metadata

norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
pins = {}
for line in open(sys.argv[1]):
    if "==" in line and not line.startswith("#"):
        name, version = line.strip().split("==", 1)
        pins[norm(name)] = version
direct = sorted({norm(re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0]) for r in metadata.requires("sdpo_lightning") or []
                 if "extra ==" not in r or "extra == \"test\"" in r or "extra == \"analysis\"" in r})
print(f"{'package':<16} {'pinned':<12} {'latest':<12}")
for name in direct:
    try:
        latest = metadata.version(name)
    except metadata.PackageNotFoundError:
        latest = "-"
    pinned = pins.get(name, "(TORCH_SPEC)" if name == "torch" else "-")
    mark = "" if latest == pinned or name == "torch" else "  <- newer than the pin"
    print(f"{name:<16} {pinned:<12} {latest:<12}{mark}")
PY
echo
echo "=== test-latest: pytest (exit status $status; full log: $log) ==="
if grep -q "short test summary info" "$log"; then
    sed -n '/short test summary info/,$p' "$log" | tail -n 40
else
    grep -v '^\s*$' "$log" | tail -n 5
fi
if [ "$status" -eq 0 ]; then
    echo "test-latest: the suite passes with the newest releases"
else
    echo "test-latest: FAILURES with the newest releases (reported, not blocking)"
fi
exit 0
