# try the three readers on a folder
import sys, traceback
d = sys.argv[1]; which = sys.argv[2:] or ["pq", "pd", "ray"]
def short(e): return f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
if "pq" in which:
    import pyarrow.parquet as pq
    try: t = pq.read_table(d, columns=["id"]); print(f"pyarrow.parquet.read_table: {t.num_rows} rows, {len(set(t['id'].to_pylist()))} distinct")
    except Exception as e: print("pyarrow.parquet.read_table ERROR", short(e))
    import pyarrow.dataset as pds
    try:
        ds = pds.dataset(d, format="parquet"); print("pyarrow.dataset files:", [f.split('/')[-1][-40:] for f in ds.files])
        t = ds.to_table(columns=["id"]); print(f"pyarrow.dataset.to_table: {t.num_rows} rows")
    except Exception as e: print("pyarrow.dataset ERROR", short(e))
if "pd" in which:
    import pandas as pd
    try: df = pd.read_parquet(d, columns=["id"]); print(f"pandas.read_parquet: {len(df)} rows, {df['id'].nunique()} distinct")
    except Exception as e: print("pandas.read_parquet ERROR", short(e))
if "ray" in which:
    import ray
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir="/tmp/ckpt-exp/raytmp", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    for v2 in (True, False):
        ray.data.DataContext.get_current().use_datasource_v2 = v2
        try:
            ds = ray.data.read_parquet(d)
            rows = ds.select_columns(["id"]).take_all() if "id" in ds.schema().names else ds.take_all()
            ids = [r.get("id") for r in rows]
            print(f"ray.data.read_parquet (v2={v2}): {len(rows)} rows, {len(set(ids))} distinct; cols={ds.schema().names}")
            try: print("   input_files:", [f.split('/')[-1][-40:] for f in ds.input_files()])
            except Exception as e: print("   input_files err", short(e))
        except Exception as e: print(f"ray.data.read_parquet (v2={v2}) ERROR", short(e))
    ray.shutdown()
