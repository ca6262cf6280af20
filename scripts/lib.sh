# shellcheck shell=bash
# Set-up steps shared by scripts/demo.sh and scripts/test.sh; sourced, not run.
# Expects the caller to have cd'ed to the repo root and set -euo pipefail.

export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

# Microseconds since the epoch, whatever the locale's decimal point.
now_us() { echo "${EPOCHREALTIME//[!0-9]/}"; }

# phase NAME: announces a phase and closes the previous one with its duration.
phase_name='' phase_start=0
phase_timings=()
phase() {
    phase_end
    phase_name=$1 phase_start=$(now_us)
    printf '\n==> %s\n' "$phase_name"
}
phase_end() {
    [ -n "$phase_name" ] || return 0
    local ms=$(( ($(now_us) - phase_start) / 1000 ))
    local line
    line=$(printf '%6d.%03ds  %s' $((ms / 1000)) $((ms % 1000)) "$phase_name")
    phase_timings+=("$line")
    printf '    (%s: %d.%03ds)\n' "$phase_name" $((ms / 1000)) $((ms % 1000))
    phase_name=''
}

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# ensure_apt PKG...: installs the Debian packages that are not installed yet;
# touches apt only when one is missing, so a second run costs one dpkg-query.
ensure_apt() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        echo "    already installed: $*"
        return 0
    fi
    echo "    installing: ${missing[*]}"
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# ensure_venv DIR PYTHON: a working venv at DIR made by PYTHON; Debian's
# python3 needs the python3-venv package for that, installed on demand.
ensure_venv() {
    local dir=$1 python=$2
    if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c 'import pip' 2>/dev/null; then
        echo "    $dir exists"
        return 0
    fi
    rm -rf "$dir"
    command -v "$python" >/dev/null || ensure_apt python3
    if ! "$python" -m venv "$dir" 2>/dev/null; then
        rm -rf "$dir"
        ensure_apt python3-venv
        "$python" -m venv "$dir"
    fi
    echo "    created $dir with $("$dir/bin/python" --version)"
}

# install_project SPEC: pip install -e SPEC (. or '.[test]') into .venv, skipped
# when it was already done for this exact pyproject.toml; the code itself is
# editable, so only pyproject.toml changes need a new install.
install_project() {
    local spec=$1 stamp=.venv/.roscoe-installed hash
    hash=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if grep -qxF "$hash $spec" "$stamp" 2>/dev/null && [ -x .venv/bin/roscoe ]; then
        echo "    roscoe already installed from this pyproject.toml ($spec)"
        return 0
    fi
    # compat mode puts the repo on sys.path with a .pth line; the default
    # import-hook finder costs ~20 ms on every roscoe start.
    .venv/bin/python -m pip install -q -e "$spec" --config-settings editable_mode=compat
    # The test extra includes the plain install, so it answers for both.
    printf '%s %s\n' "$hash" "$spec" >>"$stamp"
    [ "$spec" = . ] || printf '%s .\n' "$hash" >>"$stamp"
    echo "    installed roscoe ($spec) into .venv"
}

# compile_bytecode: .pyc files for roscoe's packages, so start-up never compiles
# (they are read even where PYTHONDONTWRITEBYTECODE=1 keeps Python from writing them).
compile_bytecode() {
    .venv/bin/python -m compileall -q cowfs journal cli >/dev/null
}
