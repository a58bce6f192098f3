# Ad-hoc mode (`tests/vm/vm run --script FILE`), inside the VM as root: the checkout at /srv/pish, then
# FILE (copied in as script) run with bash in the checkout. With --venv, a .venv with pish and its test
# extras is made first. The script may leave files in $PISH_VM_OUT for `--out DIR` to bring back.
. ./common.sh

setup_checkout
[ "${PISH_VM_FACTS:-0}" = 1 ] && host_facts
cd "$CHECKOUT"
if [ "${PISH_VM_VENV:-0}" = 1 ]; then
    t0=$(date +%s)
    step "making .venv: python3 -m venv .venv && .venv/bin/pip install -e '.[test]'"
    python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' </dev/null
    step "venv exited $? after $(elapsed_since "$t0")s"
fi
step "running the script (bash, as root, in $CHECKOUT)"
t0=$(date +%s)
timeout -k 20 "$(remaining)" bash "$JOB/script" </dev/null
rc=$?
status script_rc "$rc"
status script_seconds "$(elapsed_since "$t0")"
step "script exited $rc after $(elapsed_since "$t0")s"
exit 0
