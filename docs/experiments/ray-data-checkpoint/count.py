import sys, os, collections, pyarrow.parquet as pq, pyarrow.compute as pc
out = sys.argv[1]
files = sorted(os.listdir(out))
tot = 0; ids = []
for f in files:
    try:
        t = pq.read_table(os.path.join(out, f), columns=["id"])
        tot += t.num_rows; ids += t["id"].to_pylist()
        print(f"  {f}: {t.num_rows} rows")
    except Exception as e:
        print(f"  {f}: UNREADABLE {type(e).__name__}: {str(e)[:100]}")
c = collections.Counter(ids)
print(f"files={len(files)} rows={tot} distinct_ids={len(c)} dup_ids={sum(1 for v in c.values() if v>1)} missing={len(set(range(2000))-set(c))}")
