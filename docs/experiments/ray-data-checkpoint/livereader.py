# poll-read a folder while a run is in progress; summarize outcomes
import sys, time, collections, pyarrow.parquet as pq, pandas as pd
d = sys.argv[1]; dur = float(sys.argv[2]); res = collections.Counter(); t0 = time.time()
while time.time() - t0 < dur:
    for name, fn in (("pq", lambda: pq.read_table(d, columns=["id"]).num_rows), ("pd", lambda: len(pd.read_parquet(d, columns=["id"])))):
        try: n = fn(); res[(name, "ok")] += 1
        except Exception as e: res[(name, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")] += 1
    time.sleep(0.02)
for k, v in sorted(res.items()): print(v, k)
