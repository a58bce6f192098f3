# Sourced by the VM jobs (stage.sh, adhoc.sh) inside the VM, as root, from the unpacked job directory.
# The host's tests/vm/vm packed this directory with: checkout.tar (the working tree), wheels/ (every wheel
# pish, its build and its tests need) and env (PISH_VM_BUDGET: seconds the job has before the host gives up).
set -u
JOB=$PISH_VM_JOB
OUT=$PISH_VM_OUT
CHECKOUT=/srv/pish
WHEELS=/root/wheels
. "$JOB/env"
JOB_START=$(date +%s)

step() { echo "[VM] $*"; }
status() { echo "$1=$2" >>"$OUT/status"; }
elapsed_since() { echo $(( $(date +%s) - $1 )); }
# Seconds left for a step, keeping a margin to report and power off before the host's hard timeout.
remaining() {
    local left=$(( PISH_VM_BUDGET - $(elapsed_since "$JOB_START") - 45 ))
    [ "$left" -lt 30 ] && left=30
    echo "$left"
}

# The checkout at /srv/pish, the wheels at /root/wheels and pip told to use only them: the README's
# `pip install -e .` then runs as written, with no index.
setup_checkout() {
    step "unpacking the checkout to $CHECKOUT and the wheels to $WHEELS"
    rm -rf "$CHECKOUT" "$WHEELS"
    mkdir -p "$CHECKOUT"
    tar -xf "$JOB/checkout.tar" -C "$CHECKOUT"
    mv "$JOB/wheels" "$WHEELS"
    cat >/etc/pip.conf <<PIPCONF
[global]
no-index = true
find-links = $WHEELS
disable-pip-version-check = true
PIPCONF
    step "$(ls "$WHEELS" | wc -l) wheels; /etc/pip.conf: no-index, find-links = $WHEELS"
}

# What kind of host this is: the things pish's probes and drivers care about.
host_facts() {
    step "host facts:"
    {
        echo "kernel: $(uname -r)"
        echo "os: $(. /etc/os-release; echo "$PRETTY_NAME") (debian_version $(cat /etc/debian_version))"
        echo "python3: $(python3 --version 2>&1) at $(command -v python3)"
        echo "systemd: $(systemctl --version | head -n1); PID 1: $(cat /proc/1/comm);" \
             "is-system-running: $(systemctl is-system-running 2>&1); failed units: $(systemctl --failed --plain --no-legend | wc -l)"
        echo "cgroup fs at /sys/fs/cgroup: $(stat -fc %T /sys/fs/cgroup)"
        echo "cgroup.controllers: $(cat /sys/fs/cgroup/cgroup.controllers 2>/dev/null)"
        echo "cgroup.subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null)"
        echo "user@.service: $(systemctl show -p Delegate -p DelegateControllers user@0.service | tr '\n' ' ')"
        echo "this job's cgroup: $(cat /proc/self/cgroup)"
        echo "kernel.unprivileged_userns_clone=$(sysctl -n kernel.unprivileged_userns_clone 2>&1)" \
             "user.max_user_namespaces=$(sysctl -n user.max_user_namespaces 2>&1)"
        if setpriv --reuid=65534 --regid=65534 --clear-groups unshare -U -r true 2>/dev/null; then
            echo "unprivileged user namespace (unshare -U -r as nobody): works"
        else
            echo "unprivileged user namespace (unshare -U -r as nobody): FAILS"
        fi
        echo "overlay module: $(lsmod | grep -w '^overlay' || echo 'not loaded')"
        echo "memory: $(free -m | awk '/^Mem:/ {print $2 " MiB"}'), cpus: $(nproc)"
        echo "default route: $(ip -4 route show default 2>&1)"
    } | sed 's/^/[VM]   /' | tee "$OUT/facts.txt"
}
