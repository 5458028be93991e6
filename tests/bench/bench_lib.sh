# bench_lib.sh — what the shell benchmarks (bench_recovery.sh, bench_ettr.sh) share: a clock
# in ms, reading one value of a JSON document, and polling a condition. Sourced; needs $py.
now_ms() { date +%s%3N; }
# json EXPR: EXPR of the JSON document on stdin (d), printed
json() { "$py" -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
# wait_until SECONDS CONDITION: 0 once CONDITION (evaluated every 0.1 s) holds, 1 at the limit
wait_until() {
  local end=$((SECONDS + $1))
  until eval "$2"; do [ $SECONDS -ge $end ] && return 1; sleep 0.1; done
}
