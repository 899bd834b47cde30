#!/usr/bin/env bash
# Rebuild the shipped suites (eval/suites/<name>/) from installed packages, deterministically (seed 0).
#
#   eval/suites/build.sh [NAME...]        default: every suite below
#
# Each suite is cut by `repocomplete eval build-suite` from a scratch copy of an installed package, laid out as a
# repository: <scratch>/<name>/<package folders> (plus, for npm, package.json and the licence). Nothing is
# downloaded: the Python packages come from the running interpreter's site-packages ($PYTHON, default python), the
# npm ones from $NPM_PREFIX/node_modules (default /tmp/npmpkgs; fill it with
# `npm install --prefix /tmp/npmpkgs zod@4.6.7`). The versions are pinned below: another installed version is an
# error (its tasks would differ), unless SUITES_ANY_VERSION=1. SUITES_OUT=DIR writes the suites there instead.
set -euo pipefail

HERE=${SUITES_OUT:-$(cd "$(dirname "$0")" && pwd)}
PYTHON=${PYTHON:-python}
NPM_PREFIX=${NPM_PREFIX:-/tmp/npmpkgs}
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/repocomplete-suites.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT

check_version() {  # NAME WANTED FOUND
    if [ "$2" != "$3" ] && [ "${SUITES_ANY_VERSION:-0}" != 1 ]; then
        echo "build.sh: suite $1 is pinned to version $2, found $3 (SUITES_ANY_VERSION=1 to build anyway)" >&2
        exit 2
    fi
}

cut() {  # NAME N: build-suite from $SCRATCH/NAME into eval/suites/NAME, replacing it
    local name=$1 n=$2
    find "$SCRATCH/$name" -name __pycache__ -prune -exec rm -rf {} +
    rm -rf "$HERE/$name.new"
    "$PYTHON" -m repocomplete eval build-suite "$SCRATCH/$name" --out "$HERE/$name.new" --n "$n" --seed 0 --json \
        --kind "${KIND:-line}" > "$SCRATCH/$name.json"
    rm -rf "$HERE/$name"
    mv "$HERE/$name.new" "$HERE/$name"
    printf '\n## Rebuilding it\n\n    eval/suites/build.sh %s\n\n%s\n' "$name" "$3" >> "$HERE/$name/SOURCE.md"
    echo "$name: $(grep -c . "$HERE/$name/tasks.jsonl") tasks"
}

python_suite() {  # NAME DISTRIBUTION VERSION N FOLDER... (top-level package folders of the distribution)
    local name=$1 dist=$2 version=$3 n=$4
    shift 4
    local found site
    found=$("$PYTHON" -c "import importlib.metadata as m; print(m.version('$dist'))")
    check_version "$name" "$version" "$found"
    site=$("$PYTHON" -c "import importlib.metadata as m; print(m.distribution('$dist').locate_file(''))")
    mkdir -p "$SCRATCH/$name"
    for folder in "$@"; do
        cp -r "$site/$folder" "$SCRATCH/$name/"
    done
    cut "$name" "$n" "\`$name/\` held a copy of the installed package folders $(printf '`%s/` ' "$@")($dist $found, \`__pycache__\` removed)$([ "${KIND:-line}" = line ] || echo "; tasks of kind \`${KIND}\` (\`--kind ${KIND}\`)")."
}

npm_suite() {  # NAME PACKAGE VERSION N SOURCE-FOLDER [english-only] (SOURCE-FOLDER: the unbundled sources, e.g. src)
    local name=$1 pkg=$2 version=$3 n=$4 src=$5 english_only=${6:-}
    local dir="$NPM_PREFIX/node_modules/$pkg" found
    if [ ! -f "$dir/package.json" ]; then
        echo "build.sh: npm package $pkg not found in $NPM_PREFIX: npm install --prefix $NPM_PREFIX $pkg@$version" >&2
        exit 2
    fi
    found=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$dir/package.json" | head -1)
    check_version "$name" "$version" "$found"
    mkdir -p "$SCRATCH/$name"
    cp -r "$dir/$src" "$SCRATCH/$name/"
    # tests are never cut from, and a Python wheel ships none: leave them out, as the suite would be twice the size
    find "$SCRATCH/$name" -type d \( -name tests -o -name __tests__ \) -prune -exec rm -rf {} +
    find "$SCRATCH/$name" -type f \( -name '*.test.*' -o -name '*.spec.*' \) -delete
    local note="less its tests"
    if [ -n "$english_only" ]; then
        # dozens of translations of one file would give near-identical tasks (the same line in 20 locales), which
        # any retrieval answers by copying: keep the English one only
        find "$SCRATCH/$name" -path '*/locales/*' -type f ! -name 'en.*' -delete
        note='less its tests and its locales but `en`'
    fi
    cp "$dir/package.json" "$SCRATCH/$name/"
    find "$dir" -maxdepth 1 -type f -iname 'licen[cs]e*' -exec cp {} "$SCRATCH/$name/" \;
    cut "$name" "$n" "\`$name/\` held the npm package's \`$src/\` (its TypeScript sources, not the bundled \`.js\`/\`.cjs\`), its \`package.json\` and licence, $note ($pkg $found from \`npm install --prefix $NPM_PREFIX $pkg@$version\`)."
}

build() {
    case $1 in
        markdown_it_py) python_suite markdown_it_py markdown-it-py 4.3.0 40 markdown_it ;;
        rich) python_suite rich rich 15.0.0 50 rich ;;
        anyio) python_suite anyio anyio 4.16.0 40 anyio ;;
        jinja2) python_suite jinja2 jinja2 3.1.6 40 jinja2 ;;
        zod) npm_suite zod zod 4.6.7 50 src english-only ;;
        # monitor-guided decoding's suites: `expr.member` uses of repository members, calls with keyword arguments
        rich_member) KIND=member python_suite rich_member rich 15.0.0 36 rich ;;
        anyio_member) KIND=member python_suite anyio_member anyio 4.16.0 36 anyio ;;
        rich_kwargs) KIND=kwargs python_suite rich_kwargs rich 15.0.0 30 rich ;;
        anyio_kwargs) KIND=kwargs python_suite anyio_kwargs anyio 4.16.0 30 anyio ;;
        *) echo "build.sh: unknown suite $1 (known: markdown_it_py rich anyio jinja2 zod rich_member anyio_member" \
                "rich_kwargs anyio_kwargs)" >&2; exit 2 ;;
    esac
}

if [ $# -eq 0 ]; then
    set -- markdown_it_py rich anyio jinja2 zod rich_member anyio_member rich_kwargs anyio_kwargs
fi
for name in "$@"; do
    build "$name"
done
