#!/usr/bin/env bash
# Demo: the whole job roscoe exists for, on a scratch copy of examples/cases.
# An AI paralegal's reorganize.py runs inside a transaction; roscoe shows the
# hashed diff while the live tree stays as it was; the commit lands all of it;
# the rollback puts the tree back exactly (bytes, modes, owners, mtimes,
# compared with a sha256 listing taken before); `roscoe verify` is clean.
#
# Installs what it needs (a venv at .venv) first; `--no-install` skips that and
# uses the roscoe on PATH. It writes only its own scratch dir (the copy of the
# tree and the state dir, under ${TMPDIR:-/tmp}), besides .venv; run it again
# and it starts over in a new scratch dir.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

install=1
case "${1:-}" in
    '') ;;
    --no-install) install=0 ;;
    *) echo "usage: scripts/demo.sh [--no-install]" >&2; exit 2 ;;
esac

# show CMD...: prints the command as it would be typed, then runs it.
show() {
    printf '\n$'
    printf ' %q' "$@"
    printf '\n'
    "$@"
}

# listing DIR: one line per path under DIR, sorted: type, permission bits,
# owner, and for a file its mtime (ns) and sha256, for a symlink its target.
# (A directory's mtime is not part of it: roscoe does not track it.)
listing() {
    local path
    (cd "$1" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
        while IFS= read -r -d '' path; do
            if [ -L "$path" ]; then
                printf '%s -> %s  %s\n' "$(stat -c '%F %a %u:%g' -- "$path")" "$(readlink -- "$path")" "$path"
            elif [ -f "$path" ]; then
                printf '%s %s  %s\n' "$(stat -c '%F %a %u:%g %.9Y' -- "$path")" \
                    "$(sha256sum <"$path" | cut -c1-64)" "$path"
            else
                printf '%s  %s\n' "$(stat -c '%F %a %u:%g' -- "$path")" "$path"
            fi
        done)
}

if [ "$install" = 1 ]; then
    phase "Set up: Python venv at .venv with roscoe installed (pip install -e .)"
    ensure_venv .venv python3
    install_project .
    compile_bytecode
    # The venv's roscoe, without putting the venv first on PATH for the script too.
    roscoe() { "$repo/.venv/bin/roscoe" "$@"; }
    path_hint=" PATH=$repo/.venv/bin:\$PATH"
else
    path_hint=''
fi

phase "Copy the sample case files to a scratch 'live tree'"
scratch=$(mktemp -d "${TMPDIR:-/tmp}/roscoe-demo.XXXXXX")
ROOT=$scratch/projects
# Only this scratch state dir and no config: the demo never reads or writes yours.
export ROSCOE_HOME=$scratch/state
unset ROSCOE_CONFIG ROSCOE_ROOT ROSCOE_SOCKET
cp -a examples/cases "$ROOT"
listing "$ROOT" >"$scratch/before.txt"
echo "    live tree:    $ROOT ($(find "$ROOT" -type f | wc -l) files)"
echo "    roscoe state: ROSCOE_HOME=$ROSCOE_HOME"
echo "    listing of the tree (type, mode, owner, mtime, sha256 of every path): $scratch/before.txt"
echo "    its sha256: $(sha256sum <"$scratch/before.txt" | cut -c1-64)"

phase "Open a transaction over the live tree"
id=$(roscoe tx begin --root "$ROOT" -m "reorganize sample cases")
echo "    transaction: $id"

phase "Run the paralegal's reorganize.py inside the transaction's overlay"
echo "    (it sees and edits $ROOT, but its writes land in the transaction's staging area)"
# The script comes on stdin: a run has a private /tmp, and this repo may live under /tmp.
show roscoe tx run --tx "$id" -- python3 - "$ROOT" <"$repo/examples/reorganize.py"

phase "The hashed diff of what the script changed"
show roscoe tx diff "$id"

phase "The live tree is untouched until commit"
listing "$ROOT" >"$scratch/staged.txt"
if show cmp "$scratch/before.txt" "$scratch/staged.txt"; then
    echo "    the listing matches: every path in $ROOT is as it was."
else
    echo "demo: the live tree changed before any commit; that is a roscoe bug" >&2
    exit 1
fi

phase "Commit: all of the diff lands in the live tree, journaled, or none of it"
show roscoe tx commit "$id" --yes

phase "The live tree changed"
listing "$ROOT" >"$scratch/committed.txt"
if cmp -s "$scratch/before.txt" "$scratch/committed.txt"; then
    echo "demo: the commit left the live tree as it was; that is a roscoe bug" >&2
    exit 1
fi
echo "    $(diff "$scratch/before.txt" "$scratch/committed.txt" | grep -c '^[<>]') lines of the listing differ; one case now:"
show ls "$ROOT/smith-v-jones" "$ROOT/smith-v-jones/Unsorted"
show roscoe tx log

phase "Roll the commit back: a new transaction through the same protocol"
show roscoe tx rollback "$id" --yes

phase "The live tree is exactly as before"
listing "$ROOT" >"$scratch/after.txt"
if show cmp "$scratch/before.txt" "$scratch/after.txt"; then
    echo "    the listing matches the one taken before the run ($(wc -l <"$scratch/after.txt") paths:" \
        "bytes, modes, owners and mtimes)"
    echo "    its sha256: $(sha256sum <"$scratch/after.txt" | cut -c1-64)"
else
    show diff "$scratch/before.txt" "$scratch/after.txt" || true
    echo "demo: the rollback did not give back the tree as it was; that is a roscoe bug" >&2
    exit 1
fi

phase "roscoe verify: the journal, the blobs, the audit chain and the live tree agree"
show roscoe verify
phase_end

cat <<EOF

Done: run, hashed diff, commit, rollback, the tree as it was, verify clean.
To look further, with the same state dir:
    export ROSCOE_HOME=$ROSCOE_HOME$path_hint
    roscoe tx log --json          # the commit and its rollback
    roscoe audit                  # every step above, hash-chained
    roscoe tx show $id   # the transaction's record: runs, diff summary
Remove $scratch when finished.
EOF
