#!/usr/bin/env bash
# `make demo`: the real job on the bundled sample data against the bundled Zoho sandbox.
# Starts `batcher sandbox --from <sample>` in the background, runs `batcher run`, shows the summary
# and where the results are, and stops the sandbox.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
INPUT=${INPUT:-sample_data/offboarding.csv}
PORT=${PORT:-$($BIN/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
OUT=out/demo
mkdir -p "$OUT"
rm -f "$OUT"/offboarding.*   # a demo starts fresh; a real job would resume from its journal

$BIN/batcher sandbox --port "$PORT" --from "$INPUT" --faults "${FAULTS:-flaky}" --seed 1 \
    > "$OUT/sandbox.log" 2>&1 &
SANDBOX=$!
trap 'kill $SANDBOX 2>/dev/null; wait $SANDBOX 2>/dev/null' EXIT
for _ in $(seq 1 100); do
    $BIN/python -c "import socket,sys; socket.create_connection(('127.0.0.1',$PORT),0.2)" 2>/dev/null && break
    sleep 0.1
done

# The sandbox's own (fake) credentials; a real job takes yours from the environment.
export ZOHO_API_DOMAIN="http://127.0.0.1:$PORT" ZOHO_ACCOUNTS_URL="http://127.0.0.1:$PORT"
export ZOHO_CLIENT_ID=sandbox-client-id ZOHO_CLIENT_SECRET=sandbox-client-secret
export ZOHO_REFRESH_TOKEN=sandbox-refresh-token

echo "== batcher plan $INPUT"
$BIN/batcher plan "$INPUT" | head -8
echo
echo "== batcher run $INPUT --results $OUT/offboarding.csv   (sandbox with '${FAULTS:-flaky}' faults)"
$BIN/batcher run "$INPUT" --results "$OUT/offboarding.csv"
code=$?
echo
echo "exit code $code:"
case $code in
  0) echo "  every row un-enrolled, not enrolled, scheduled or duplicate" ;;
  1) echo "  finished; some rows are invalid or failed (the sample has deliberately bad rows) - see the results" ;;
  *) echo "  unexpected for the demo"; exit $code ;;
esac
echo "first rows of $OUT/offboarding.csv:"
head -5 "$OUT/offboarding.csv"
echo "invalid rows:"
grep -E ',"?invalid"?,' "$OUT/offboarding.csv" | head -5
exit 0
