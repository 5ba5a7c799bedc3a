# shellcheck shell=bash
# ci_venv ROOT REQUIREMENT...: print the path of a virtual environment under ROOT that holds
# what `pip install REQUIREMENT...` would install into a fresh environment today.
#
# pip first resolves REQUIREMENT... against the registry as if nothing were installed
# (--dry-run --ignore-installed --report: metadata only, nothing is installed); the
# environment is cached under a hash of the versions it picked (.ci/venv_key.py). A new
# release of any dependency, direct or transitive, thus gets a new environment built from
# scratch, as a new machine would, instead of an old one that still satisfies setup.cfg.
# An environment whose build did not finish (no .complete) is built again; one unused for
# 14 days is removed.
ci_venv() {
    local root=$1
    shift
    local here work key venv old
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd) || return 1
    mkdir -p "$root" || return 1
    work=$(mktemp -d) || return 1
    if [ ! -x "$root/resolver/bin/python" ]; then
        rm -rf "$root/resolver"
        python3 -m venv "$root/resolver" >&2 || return 1
    fi
    "$root/resolver/bin/python" -m pip install --quiet --dry-run --ignore-installed \
        --report "$work/report.json" "$@" >&2 || { rm -rf "$work"; return 1; }
    key=$(python3 "$here/venv_key.py" "$work/report.json" \
        --constraints "$work/constraints.txt") || { rm -rf "$work"; return 1; }
    venv="$root/venv-$key"
    if [ ! -f "$venv/.complete" ]; then
        echo "ci: building the environment $venv (what a fresh install resolves today)" >&2
        rm -rf "$venv"
        python3 -m venv "$venv" >&2 &&
            "$venv/bin/python" -m pip install --quiet -c "$work/constraints.txt" "$@" >&2 ||
            { rm -rf "$work"; return 1; }
    fi
    rm -rf "$work"
    touch "$venv/.complete"
    for old in "$root"/venv-*/.complete; do
        if [ -e "$old" ] && [ -n "$(find "$old" -mtime +14)" ]; then
            rm -rf "$(dirname "$old")"
        fi
    done
    echo "$venv"
}
