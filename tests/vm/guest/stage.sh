# The VM stage, inside the VM as root: README command 1 exactly as written (readme-1.sh, extracted from
# the README by the host), then the tests marked `hostkind` with the venv that command made.
# Results go to $OUT/status as key=value lines, for the host to read back.
. ./common.sh

setup_checkout
host_facts
cd "$CHECKOUT"

# The overlay module must not be loaded yet: pish has to load it itself, through mount(2).
overlay_before=$(lsmod | grep -w '^overlay' || true)
status overlay_before "${overlay_before:-not loaded}"
step "lsmod | grep overlay, before README command 1: ${overlay_before:-(nothing: not loaded)}"

step "README command 1, as root in $CHECKOUT: $(cat "$JOB/readme-1.sh")"
t0=$(date +%s)
timeout -k 20 "$(remaining)" bash "$JOB/readme-1.sh" </dev/null 2>&1 | tee "$OUT/readme-1.log"
readme_rc=${PIPESTATUS[0]}
status readme_rc "$readme_rc"
status readme_seconds "$(elapsed_since "$t0")"
status readme_hello "$(grep -m1 'hello from' "$OUT/readme-1.log" || true)"
overlay_after=$(lsmod | grep -w '^overlay' || true)
status overlay_after "${overlay_after:-not loaded}"
step "README command 1 exited $readme_rc after $(elapsed_since "$t0")s;" \
     "lsmod | grep overlay now: ${overlay_after:-(nothing: not loaded)}"

# The tests, with the venv README command 1 made (made here only if that command failed before it did).
t0=$(date +%s)
if [ ! -x .venv/bin/python ]; then
    step "no .venv from README command 1: making one (python3 -m venv .venv) so the tests can still run"
    status venv_fallback yes
    python3 -m venv .venv
fi
step "installing the test extras: .venv/bin/pip install -e '.[test]'"
timeout -k 20 "$(remaining)" .venv/bin/pip install -q -e '.[test]' </dev/null 2>&1 | tee "$OUT/install.log"
install_rc=${PIPESTATUS[0]}
status install_rc "$install_rc"
status install_seconds "$(elapsed_since "$t0")"
step "pip install exited $install_rc after $(elapsed_since "$t0")s"

t0=$(date +%s)
budget=$(remaining)
step "pytest -q -m hostkind -rs -p no:cacheprovider (at most ${budget}s)"
timeout -k 30 "$budget" .venv/bin/python -m pytest -q -m hostkind -rs -p no:cacheprovider </dev/null 2>&1 \
    | tee "$OUT/pytest.log"
pytest_rc=${PIPESTATUS[0]}
status pytest_rc "$pytest_rc"
status pytest_seconds "$(elapsed_since "$t0")"
status pytest_summary "$(grep -v '^\s*$' "$OUT/pytest.log" | tail -n1)"
step "pytest exited $pytest_rc after $(elapsed_since "$t0")s"
exit 0
