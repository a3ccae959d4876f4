#!/bin/bash
# usage: killrun.sh MODE MIN_COMMITTED [extra env...]
MODE=$1; K=$2
cd /tmp/ckpt-exp; . /work/main/.venv/bin/activate
setsid python exp.py $MODE > $MODE.run1.log 2>&1 &
PID=$!
echo "driver pid=$PID pgid=$(ps -o pgid= -p $PID)"
for i in $(seq 1 3000); do
  n=$(ls $MODE/ckpt 2>/dev/null | grep -vc pending)
  [ "$n" -ge "$K" ] && break
  kill -0 $PID 2>/dev/null || { echo "driver exited early"; break; }
  sleep 0.05
done
# collect all descendants of the driver
desc() { for c in $(ps -o pid= --ppid $1); do echo $c; desc $c; done; }
D="$PID $(desc $PID)"
kill -9 -- -$PID
for p in $D; do kill -9 $p 2>/dev/null; done
echo "killed at committed=$n; pids killed: $(echo $D | wc -w)"
sleep 1
echo "--- ckpt dir after kill:"; ls $MODE/ckpt | sed 's/^[^_]*_[^_]*_/…_/' | sort | uniq -c | head -50
echo "--- out dir after kill:"; ls -la $MODE/out | awk '{print $5, $9}' | sed 's/ [^_]*_[^_]*_/ …_/'
