import os, sys, pyarrow as pa, pyarrow.parquet as pq
d = sys.argv[1]; n = int(sys.argv[2]) if len(sys.argv) > 2 else 20; os.makedirs(d, exist_ok=True)
per = 2000 // n
for f in range(n):
    ids = list(range(f*per, (f+1)*per))
    pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "x": pa.array([i*3 for i in ids], pa.int64())}), f"{d}/in-{f:03d}.parquet")
print("ok")
