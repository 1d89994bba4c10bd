#!/bin/bash
# SIPp REGISTER benchmark: vivait-sip and Kamailio side by side, same SIPp command.
#
#   bench/register_bench.sh [noauth] [auth] [memory]
#
# For each server and test, a ladder of fixed-rate steps (STEP_SECS each, -r R -rp 1000,
# R*STEP_SECS calls); a step is clean when failed+unfinished calls <= 0.1 % and the
# achieved rate >= 95 % of the target.  The ladder stops at the first unclean step and
# bisects REFINE (default 2) times between the last clean and the first unclean rate.
#   noauth: REGISTER -> 200 (vivait-sip trusts 127.0.0.0/8 as a trunk; Kamailio without auth)
#   auth:   REGISTER -> 401 -> REGISTER+digest -> 200 (MD5: SIPp cannot do SHA-256)
#   memory: vivait-sip only: 100,000 bindings -> RSS; SIGKILL, restart, re-registration
#           storm of the 100,000 contacts; counts bindings before/after.
# Knobs: STEP_SECS (10) NOAUTH_RATES AUTH_RATES OUT_DIR KAMAILIO=0 (skip Kamailio)
#        WORKERS (vivait-sip worker processes; default: number of CPUs; memory test: MEM_WORKERS, 1)
#        STORM_RATE (2000) MEM_USERS (100000).
# Users 100000..109999 (password "secret") are config users for vivait-sip; Kamailio
# accepts any user with password "secret".  Everything runs on 127.0.0.1.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
STEP_SECS=${STEP_SECS:-10}
NOAUTH_RATES=${NOAUTH_RATES:-"1000 2000 4000 8000 16000"}
AUTH_RATES=${AUTH_RATES:-"500 1000 2000 4000 8000 10000"}
STORM_RATE=${STORM_RATE:-2000}
MEM_USERS=${MEM_USERS:-100000}
WORKERS=${WORKERS:-$(nproc)}
MEM_WORKERS=${MEM_WORKERS:-1}
REFINE=${REFINE:-2}
KAMAILIO=${KAMAILIO:-1}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/register_bench.XXXXXX)}
TESTS=${*:-noauth auth memory}
mkdir -p "$OUT_DIR"
SUMMARY=$OUT_DIR/summary.txt
SERVER_PID=""

log() { echo "$(date +%H:%M:%S) $*" | tee -a "$SUMMARY"; }
free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null
        for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$SERVER_PID" 2>/dev/null && kill -KILL "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
    fi
    SERVER_PID=""
}
trap stop_server EXIT

wait_udp() { # port
    for _ in $(seq 1 300); do
        ss -H -uln "sport = :$1" 2>/dev/null | grep -q . && return 0
        sleep 0.1
    done
    return 1
}

# users.csv for SIPp: user;domain;[authentication ...] (SEQUENTIAL, wraps around)
make_users_csv() { # first count file
    python3 - "$1" "$2" "$3" <<'PY'
import sys
first, count, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
with open(path, "w") as f:
    f.write("SEQUENTIAL\n")
    for n in range(first, first + count):
        f.write(f"{n};127.0.0.1;[authentication username={n} password=secret]\n")
PY
}

# vivait-sip config: users FIRST..FIRST+COUNT-1 with password "secret"; MODE auth|noauth
make_vivait_config() { # mode first count file
    python3 - "$@" <<'PY'
import json, sys
mode, first, count, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
# count 0: no config users (the memory test imports them into the store with `user import`)
registrar = {
    "algorithms": ["MD5"],
    "users": [{"number": str(n), "password": "secret"} for n in range(first, first + count)],
}
if mode == "noauth":
    registrar["trunks"] = [{"name": "bench", "networks": ["127.0.0.0/8"]}]
config = {
    "registrar": registrar,
    "sip": {"limits": {"max_transactions": 200000}},
    "log": {"level": "warning"},
    "http": {"enabled": False},
}
json.dump(config, open(path, "w"))
PY
}

start_vivait() { # mode port datadir [users_first users_count [workers]]
    local cfg=$OUT_DIR/vivait_$1.json
    make_vivait_config "$1" "${4:-100000}" "${5:-10000}" "$cfg"
    vivait-sip serve --config "$cfg" --listen "udp:127.0.0.1:$2" --no-http --workers "${6:-$WORKERS}" \
        --admin "127.0.0.1:$ADMIN_PORT" --data-dir "$3" > "$OUT_DIR/vivait_$1.log" 2>&1 &
    SERVER_PID=$!
    wait_udp "$2" || { log "vivait-sip did not start"; cat "$OUT_DIR/vivait_$1.log"; return 1; }
    for _ in $(seq 1 600); do grep -q '^ready' "$OUT_DIR/vivait_$1.log" && return 0; sleep 0.1; done
    return 1
}

start_kamailio() { # mode port
    local def=()
    [ "$1" = auth ] && def=(-A WITH_AUTH)
    local rundir=$OUT_DIR/kamailio_run; mkdir -p "$rundir"
    kamailio -f "$HERE/kamailio/kamailio.cfg" -DD -E -m 1024 -M 16 -l "udp:127.0.0.1:$2" \
        -Y "$rundir" -w "$rundir" "${def[@]}" > "$OUT_DIR/kamailio_$1.log" 2>&1 &
    SERVER_PID=$!
    wait_udp "$2" || { log "kamailio did not start"; cat "$OUT_DIR/kamailio_$1.log"; return 1; }
    sleep 1
}

# one step; prints "ok failed achieved verdict"
run_sipp() { # scenario port rate count dir csv [sipp_local_port]
    local scen=$1 port=$2 rate=$3 count=$4 dir=$5 csv=$6 lport=${7:-$(free_port)}
    mkdir -p "$dir"
    local limit=$(( rate * 2 > 1000 ? rate * 2 : 1000 ))
    ( cd "$dir" && timeout -k 5 $(( STEP_SECS * 3 + 30 )) sipp "127.0.0.1:$port" -sf "$HERE/$scen" \
        -inf "$csv" -i 127.0.0.1 -p "$lport" -r "$rate" -rp 1000 -m "$count" -l "$limit" \
        -nostdin -buff_size 4194304 -max_log_size 2000000 -trace_err -trace_stat -stf stat.csv \
        -fd 1 -timeout $(( STEP_SECS * 3 + 20 ))s > sipp.out 2>&1 )
    python3 - "$dir/stat.csv" "$count" "$rate" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1], newline=""), delimiter=";"))
v = dict(zip(rows[0], rows[-1]))
count, rate = int(sys.argv[2]), int(sys.argv[3])
ok = int(v.get("SuccessfulCall(C)", 0) or 0)
failed = int(v.get("FailedCall(C)", 0) or 0)
epoch = lambda k: float(v[k].split("\t")[-1])
elapsed = epoch("CurrentTime") - epoch("StartTime")
achieved = ok / elapsed if elapsed > 0 else 0
bad = (count - ok) / count * 100
verdict = "clean" if bad <= 0.1 and achieved >= 0.95 * rate else "unclean"
print(ok, failed, f"{achieved:.0f}", f"{bad:.3f}", verdict)
PY
}

ladder() { # name scenario port csv rates...
    local name=$1 scen=$2 port=$3 csv=$4; shift 4
    local best=0 bad=0 r
    try_rate() {
        local res; res=$(run_sipp "$scen" "$port" "$1" $(( $1 * STEP_SECS )) "$OUT_DIR/${name}_$1" "$csv")
        local cpu; cpu=$(ps -o %cpu= -p "$SERVER_PID" 2>/dev/null | tr -d ' ')
        log "$name @ $1/s: ok/failed/achieved/lost%/verdict = $res"
        [ "${res##* }" = clean ]
    }
    for r in "$@"; do
        if try_rate "$r"; then best=$r; else bad=$r; break; fi
        sleep 2
    done
    local round
    for round in $(seq 1 "$REFINE"); do  # bisect REFINE times, as the peer recipe does
        [ "$bad" -gt 0 ] && [ "$best" -gt 0 ] || break
        local mid=$(( (best + bad) / 2 / 100 * 100 ))
        [ "$mid" -gt "$best" ] && [ "$mid" -lt "$bad" ] || break
        sleep 2
        if try_rate "$mid"; then best=$mid; else bad=$mid; fi
    done
    log "RESULT $name highest clean rate: $best/s"
}

PORT=$(free_port)
ADMIN_PORT=$(free_port)
make_users_csv 100000 10000 "$OUT_DIR/users.csv"
{
    echo "# register_bench.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) host $(hostname) cpus $(nproc) step ${STEP_SECS}s"
    echo "# $(sipp -v 2>&1 | grep -m1 SIPp | sed 's/^ *//')"
    echo "# $(kamailio -v 2>&1 | head -1)"
    echo "# vivait-sip $(vivait-sip --version 2>&1) ($(python3 -c 'import vivait_sip.native as n; print(n.state)')), $WORKERS workers  $(python3 --version)"
} > "$SUMMARY"
log "output in $OUT_DIR"

for t in $TESTS; do
    case $t in
        noauth|auth)
            scen=reg_$t.xml
            rates=$NOAUTH_RATES; [ "$t" = auth ] && rates=$AUTH_RATES
            if [ "$KAMAILIO" = 1 ]; then
                start_kamailio "$t" "$PORT" && ladder "kamailio_$t" "$scen" "$PORT" "$OUT_DIR/users.csv" $rates
                stop_server
            fi
            rm -rf "$OUT_DIR/data_$t"
            start_vivait "$t" "$PORT" "$OUT_DIR/data_$t" && ladder "vivait_$t" "$scen" "$PORT" "$OUT_DIR/users.csv" $rates
            stop_server
            ;;
        memory)
            rm -rf "$OUT_DIR/data_mem"
            make_users_csv 200000 "$MEM_USERS" "$OUT_DIR/users_mem.csv"
            # Users live in the store (as `user import` puts them), not in a 100,000-entry
            # config document that the process would keep in memory as well.
            python3 -c 'import sys; print("number,password"); [print(f"{n},secret") for n in range(200000, 200000 + int(sys.argv[1]))]' \
                "$MEM_USERS" > "$OUT_DIR/users_mem_import.csv"
            vivait-sip user import "$OUT_DIR/users_mem_import.csv" --data-dir "$OUT_DIR/data_mem" \
                --admin "127.0.0.1:$ADMIN_PORT" > "$OUT_DIR/user_import.log" 2>&1
            start_vivait noauth "$PORT" "$OUT_DIR/data_mem" 200000 0 "$MEM_WORKERS" || continue
            log "memory: RSS with $MEM_USERS users, no bindings: $(ps -o rss= -p "$SERVER_PID") KB"
            phones_port=$(free_port)  # the same contacts re-register after the restart
            res=$(run_sipp reg_noauth.xml "$PORT" "$STORM_RATE" "$MEM_USERS" "$OUT_DIR/mem_fill" "$OUT_DIR/users_mem.csv" "$phones_port")
            log "memory: fill $MEM_USERS bindings at $STORM_RATE/s: $res"
            sleep 2
            count=$(vivait-sip ctl --admin "127.0.0.1:$ADMIN_PORT" --data-dir "$OUT_DIR/data_mem" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["registrar"]["bindings"])')
            log "memory: bindings $count, RSS $(ps -o rss= -p "$SERVER_PID") KB (whole process, UDP transactions still in Timer J)"
            sleep 35
            log "memory: 35 s later (transactions ended), RSS $(ps -o rss= -p "$SERVER_PID") KB"
            kill -KILL "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=""
            log "memory: SIGKILL; restarting"
            start_vivait noauth "$PORT" "$OUT_DIR/data_mem" 200000 0 "$MEM_WORKERS" || continue
            count=$(vivait-sip ctl --admin "127.0.0.1:$ADMIN_PORT" --data-dir "$OUT_DIR/data_mem" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["registrar"]["bindings"])')
            log "memory: after restart bindings $count, RSS $(ps -o rss= -p "$SERVER_PID") KB"
            res=$(run_sipp reg_noauth.xml "$PORT" "$STORM_RATE" "$MEM_USERS" "$OUT_DIR/mem_storm" "$OUT_DIR/users_mem.csv" "$phones_port")
            log "memory: re-registration storm of $MEM_USERS at $STORM_RATE/s: $res"
            sleep 2
            count=$(vivait-sip ctl --admin "127.0.0.1:$ADMIN_PORT" --data-dir "$OUT_DIR/data_mem" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["registrar"]["bindings"])')
            log "memory: after storm bindings $count, RSS $(ps -o rss= -p "$SERVER_PID") KB"
            stop_server
            ;;
    esac
done
cat "$SUMMARY"
