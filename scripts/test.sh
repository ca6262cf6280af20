#!/usr/bin/env bash
# Installs everything the tests need on a fresh Debian machine (as root), then
# runs pytest; extra arguments go to pytest. A second run skips what is done.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

# Debian packages the tests drive: bindfs, fuse-overlayfs and fuse3 (the staging
# backends for FUSE lowers), attr (getfattr/setfattr on overlay xattrs), rclone (a gcsfuse-like
# mount over the GCS emulator), python3-venv (the venvs below), util-linux
# (runuser, unshare), sqlite3 (the journal is checked with the sqlite3 CLI),
# chromium (the browser Playwright drives in tests/test_workloads.py; Playwright's
# own browser download is not reachable), procps (pgrep, in the sandbox tests), jq (the README's agent loop, tests/test_readme_loop.py),
# busybox-static (a static busybox makes the container image [run] rootfs runs over, tests/test_rootfs.py),
# systemd (systemd-analyze verifies the units in dist/systemd, tests/test_dist.py).
APT_PACKAGES=(fuse-overlayfs fuse3 bindfs attr rclone python3-venv util-linux sqlite3 groff-base chromium procps jq
    busybox-static systemd)
# Tests that run roscoe as an ordinary user use this account and this venv:
# the default python3 may live under /root (mode 700), out of that user's reach.
TEST_USER=roscoe-test
TEST_VENV=/opt/roscoe-test-venv

phase "Debian packages"
ensure_apt "${APT_PACKAGES[@]}"

phase "Project venv .venv with roscoe and its test extra"
ensure_venv .venv python3
install_project '.[test]'
compile_bytecode

phase "FUSE for ordinary users"
# Debian's udev rule makes /dev/fuse 0666; a VM without udev leaves it 0600,
# and fuse-overlayfs run by the unprivileged tests could not open it.
chmod 0666 /dev/fuse
echo "    /dev/fuse: $(stat -c %a /dev/fuse)"

phase "Unprivileged test user '$TEST_USER'"
if id "$TEST_USER" >/dev/null 2>&1; then
    echo "    exists"
else
    useradd --create-home "$TEST_USER"
    echo "    created"
fi

phase "Venv for unprivileged runs at $TEST_VENV (roscoe's runtime dependencies)"
# pyproject.toml's [project].dependencies, one per line. Only the dependencies:
# the tests bring roscoe's own source (e.g. on PYTHONPATH).
runtime_deps=$(.venv/bin/python -c '
import tomllib
with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
# and the mcp extra: roscoe mcp runs as that user too (tests/test_serve_attacks.py)
print("\n".join(sorted(project.get("dependencies", []) + project["optional-dependencies"]["mcp"])))')
[ -n "$runtime_deps" ] || runtime_deps=$'rich\ntyper\nxxhash'
deps_stamp=$TEST_VENV/.roscoe-deps
if [ "$(cat "$deps_stamp" 2>/dev/null)" = "$runtime_deps" ] &&
    "$TEST_VENV/bin/python" -c 'import typer, rich, xxhash' 2>/dev/null; then
    echo "    up to date"
else
    ensure_venv "$TEST_VENV" /usr/bin/python3
    mapfile -t deps <<<"$runtime_deps"
    "$TEST_VENV/bin/python" -m pip install -q "${deps[@]}"
    printf '%s\n' "$runtime_deps" >"$deps_stamp"
    chmod -R a+rX "$TEST_VENV"
    echo "    installed: $(echo "$runtime_deps" | tr '\n' ' ')"
fi
runuser -u "$TEST_USER" -- "$TEST_VENV/bin/python" -c 'import typer, rich, xxhash'
echo "    $TEST_USER can import them"

phase "pytest"
set +e
.venv/bin/python -m pytest -q "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "test.sh: pytest collected no tests; that counts as a failure" >&2
    status=1
fi
phase_end

printf '\nTimings:\n'
printf '%s\n' "${phase_timings[@]}"
exit "$status"
