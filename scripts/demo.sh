#!/usr/bin/env bash
# Demo: an AI paralegal's reorganize.py runs inside a roscoe transaction over
# a copy of examples/cases; roscoe shows the hashed diff while the live tree
# stays exactly as it was. Installs what it needs (a venv at .venv) first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

# show CMD...: prints the command as it would be typed, then runs it.
show() {
    printf '\n$'
    printf ' %q' "$@"
    printf '\n'
    "$@"
}

phase "Set up: Python venv at .venv with roscoe installed (pip install -e .)"
ensure_venv .venv python3
install_project .
compile_bytecode
# The venv's roscoe, without putting the venv first on PATH for the script too.
roscoe() { "$repo/.venv/bin/roscoe" "$@"; }

phase "Copy the sample case files to a scratch 'live tree'"
scratch=$(mktemp -d /tmp/roscoe-demo.XXXXXX)
ROOT=$scratch/projects
export ROSCOE_HOME=$scratch/state
cp -a examples/cases "$ROOT"
echo "    live tree:    $ROOT ($(find "$ROOT" -type f | wc -l) files)"
echo "    roscoe state: ROSCOE_HOME=$ROSCOE_HOME"

phase "Open a transaction over the live tree"
id=$(roscoe tx begin --root "$ROOT" -m "reorganize sample cases")
echo "    transaction: $id"

phase "Run the paralegal's reorganize.py inside the transaction's overlay"
echo "    (it sees and edits $ROOT, but its writes land in the transaction's staging area)"
# The script comes on stdin: a run has a private /tmp, and this repo may live under /tmp.
show roscoe tx run --tx "$id" -- python3 - "$ROOT" <"$repo/examples/reorganize.py"

phase "The hashed diff of what the script changed"
show roscoe tx diff "$id"
show roscoe tx diff "$id" --stat

phase "The live tree is untouched until commit"
if show diff -r "$repo/examples/cases" "$ROOT"; then
    echo "    diff -r printed nothing: every file in $ROOT is as it was."
else
    echo "demo: the live tree changed before any commit; that is a roscoe bug" >&2
    exit 1
fi

phase "The transaction's record: state, run, diff summary"
show roscoe tx show "$id"
phase_end

cat <<EOF

Done. To try more, with the same state dir:
    export ROSCOE_HOME=$ROSCOE_HOME PATH=$repo/.venv/bin:\$PATH
    roscoe tx diff $id --json     # what an agent reads before asking for approval
    roscoe tx diff $id --patch    # the text changes, line by line
    roscoe tx shell --tx $id      # look around inside the staged tree
    roscoe tx abort $id           # discard it; the live tree was never touched
Remove $scratch when finished.
EOF
