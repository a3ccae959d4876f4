import os, sys, time
import numpy as np, ray
from ray.data.checkpoint import CheckpointConfig
mode = sys.argv[1]
base = f"/tmp/ckpt-exp/{mode}"
inp, out, ck = base + "/in", base + "/out", os.environ.get("CKPT", base + "/ckpt")
wide = mode.startswith("wide")
explode = mode.startswith("explode")
SLEEP = float(os.environ.get("SLEEP", "0.05"))
ray.init(address="local", num_cpus=2, include_dashboard=False,
         _temp_dir="/tmp/ckpt-exp/raytmp", log_to_driver=False)
ctx = ray.data.DataContext.get_current()
ctx.checkpoint_config = CheckpointConfig(
    id_column="id", checkpoint_path=ck,
    delete_checkpoint_on_success=os.environ.get("KEEP_CKPT") != "1")
ctx.enable_progress_bars = False
if wide or explode:
    ctx.target_max_block_size = 1 << 20
print("ckpt before run:", sorted(os.listdir(ck)) if os.path.exists(ck) else None, flush=True)
print("out before run:", len(os.listdir(out)) if os.path.exists(out) else None, flush=True)

class Slow:
    def __init__(self):
        self.pid = os.getpid()
    def __call__(self, b):
        time.sleep(SLEEP)
        b["y"] = b["id"] * 2
        b["actor_pid"] = np.full(len(b["id"]), self.pid)
        if wide:
            b["payload"] = np.array(["%06d" % i + "a" * 100_000 for i in b["id"]], dtype=object)
        if explode:
            b = {k: np.repeat(v, 3) for k, v in b.items()}
            b["k"] = np.tile(np.arange(3), len(b["id"]) // 3)
            b["payload"] = np.array(["%06d" % i + "a" * 30_000 for i in b["id"]], dtype=object)
        return b

t = time.time()
SRC = os.environ.get("SRC", "range")
if SRC == "range":
    src = ray.data.range(2000, override_num_blocks=int(os.environ.get("NB", "40")))
else:
    ctx.use_datasource_v2 = (SRC == "v2")
    src = ray.data.read_parquet(inp, override_num_blocks=int(os.environ.get("NB", "20")), num_cpus=0.25)
ds = (src
      .map_batches(Slow, batch_size=50, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.25))
ds.write_parquet(out, ray_remote_args={"num_cpus": 0.25})
print("DONE in %.1fs" % (time.time() - t), flush=True)
try:
    print(ds.stats()[:1500])
except Exception as e:
    print("stats err", e)
