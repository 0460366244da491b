# Shared by ./run-tests and ./run-demo, which source it: not a command of its own.
#
# skivi_venv DIR EXTRA makes the virtualenv DIR (if missing) and installs Skivi into it,
# editable, with the optional dependencies EXTRA. It reinstalls only when pyproject.toml, this
# file or the psycopg flavour changed (a stamp file in DIR remembers), so reruns are fast.
#
# psycopg's C implementation (psycopg[c], a core dependency) is compiled from source, which
# needs pg_config (libpq-dev) and a C compiler. Where either is missing, or the build fails,
# it installs psycopg[binary] instead: the same C implementation, prebuilt. It says so.

skivi_say() { printf '==> %s\n' "$*"; }

skivi_have_cc() { command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1; }

# The first Python >= 3.11 among $PYTHON, python3, python3.13, python3.12, python3.11.
skivi_python() {
  local candidate
  for candidate in ${PYTHON:-} python3 python3.13 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  echo "Skivi needs Python 3.11 or newer; none found (set PYTHON=/path/to/python3.11)." >&2
  return 1
}

# The first Python >= 3.12 (what Django 6 needs) among $SKIVI_DJANGO_PYTHON, python3.12,
# python3.13, python3.14, python3 and pyenv's installed versions (found in pyenv's root
# even when pyenv is not on PATH); nothing (status 1) if none. Each candidate is run, not
# just looked up: a pyenv shim of a version that is not enabled exists on PATH but fails.
skivi_django_python() {
  local candidate root=${PYENV_ROOT:-${HOME:-/root}/.pyenv}
  local candidates=(${SKIVI_DJANGO_PYTHON:-} python3.12 python3.13 python3.14 python3)
  if command -v pyenv >/dev/null 2>&1; then
    root=$(pyenv root 2>/dev/null) || true
  fi
  candidates+=("$root"/versions/3.1[2-9]*/bin/python3)
  for candidate in "${candidates[@]}"; do
    if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then
      "$candidate" -c 'import sys; print(sys.executable)'
      return 0
    fi
  done
  return 1
}

# The project's requirements with psycopg[c] swapped for psycopg[binary], one per line.
skivi_binary_requirements() {
  "$1" - "$2" <<'PY'
import re
import sys
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
requirements = list(project["dependencies"])
for extra in filter(None, sys.argv[1].split(",")):
    requirements += project["optional-dependencies"][extra]
for requirement in requirements:
    print(re.sub(r"^psycopg\[c\]", "psycopg[binary]", requirement))
PY
}

skivi_venv() {
  local venv=$1 extra=$2 python flavour=c key stamp
  stamp="$venv/.skivi-install"
  if [ ! -x "$venv/bin/python" ]; then
    python=$(skivi_python) || return 1
    skivi_say "creating $venv ($("$python" --version))"
    "$python" -m venv "$venv" || {
      echo "could not create $venv; on Debian or Ubuntu: apt install python3-venv" >&2
      return 1
    }
  fi
  python="$venv/bin/python"
  if ! command -v pg_config >/dev/null 2>&1 || ! skivi_have_cc; then
    flavour=binary
  fi
  key="$flavour $extra $(cat pyproject.toml venv.sh | "$python" -c \
    'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
    skivi_say "$venv is up to date"
    return 0
  fi
  local pip=("$python" -m pip --disable-pip-version-check --no-input --quiet)
  if [ "$flavour" = c ]; then
    skivi_say "installing skivi[$extra] into $venv (compiling psycopg's C implementation: a minute or so)"
    if ! "${pip[@]}" install -e ".[$extra]"; then
      skivi_say "building psycopg's C implementation failed (see above)"
      flavour=binary
      key="binary ${key#c }"
    fi
  fi
  if [ "$flavour" = binary ]; then
    if ! command -v pg_config >/dev/null 2>&1; then
      skivi_say "pg_config not found (no libpq-dev here): cannot compile psycopg's C implementation"
    elif ! skivi_have_cc; then
      skivi_say "no C compiler (cc, gcc) found: cannot compile psycopg's C implementation"
    fi
    skivi_say "falling back to psycopg[binary], the prebuilt wheel of psycopg's C implementation"
    skivi_say "installing skivi[$extra] into $venv with psycopg[binary]"
    local listed requirements
    listed=$(skivi_binary_requirements "$python" "$extra") || return 1
    mapfile -t requirements <<<"$listed"
    "${pip[@]}" install "${requirements[@]}" || return 1
    # --no-deps: the dependencies are in, and psycopg[c] must not be built.
    "${pip[@]}" install --no-deps -e . || return 1
  fi
  echo "$key" >"$stamp"
}
