# Sourced by gpu_check.sh and cpu_check.sh: `step NAME COMMAND...` runs COMMAND for at most
# $seconds, then prints how it ended, its wall seconds and the machine's load; a step that fails
# or runs out sets $status to 1 and the next one runs.
status=0
step() {
    echo "== $1"
    echo "load_average_before: $(cut -d' ' -f1-3 /proc/loadavg)"
    local start=$(date +%s) code=0
    timeout "$seconds" "${@:2}" || code=$?
    [ $code -eq 124 ] && echo "$1: stopped after ${seconds} s"
    [ $code -ne 0 ] && status=1
    echo "wall_seconds: $(( $(date +%s) - start ))"
    echo "load_average_after: $(cut -d' ' -f1-3 /proc/loadavg)"
}
