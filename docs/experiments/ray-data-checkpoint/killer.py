# usage: killer.py MODE  -- start exp.py MODE, kill -9 its process group when a pending ckpt
# file exists together with a data file of the same prefix (or after MAXC commits)
import os, sys, time, signal, subprocess
mode = sys.argv[1]; maxc = int(sys.argv[2]) if len(sys.argv) > 2 else 10**9
ck, out = f"{mode}/ckpt", f"{mode}/out"
log = open(f"{mode}.run1.log", "w")
p = subprocess.Popen([sys.executable, "exp.py", mode], stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=os.environ)
def desc(pid):
    res = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                st = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
                if int(st[1]) == pid: res.append(int(d))
            except Exception: pass
    return res + [x for c in res for x in desc(c)]
reason = None; t0 = time.time()
while p.poll() is None and time.time() - t0 < 150:
    try:
        cks = os.listdir(ck); outs = os.listdir(out)
    except FileNotFoundError:
        time.sleep(0.01); continue
    pend = [c[:-len(".pending.parquet")] for c in cks if c.endswith(".pending.parquet")]
    hit = [o for o in outs for b in pend if o.startswith(b)]
    ncommit = len([c for c in cks if not c.endswith(".pending.parquet")])
    if hit and ncommit >= maxc: reason = f"pending with data file {hit[:2]} after {ncommit} commits"; break
    if ncommit >= int(os.environ.get("HARDC", "150")): reason = f"{ncommit} commits"; break
    time.sleep(0.005)
pids = [p.pid] + desc(p.pid)
os.killpg(p.pid, signal.SIGKILL)
for x in pids:
    try: os.kill(x, signal.SIGKILL)
    except ProcessLookupError: pass
print(f"killed ({reason}) after {time.time()-t0:.1f}s; {len(pids)} pids")
time.sleep(1)
cks = sorted(os.listdir(ck)); outs = sorted(os.listdir(out))
short = lambda n: n.split("_", 2)[-1]
print("ckpt:", [short(c) for c in cks])
print("out :", [(short(o), os.path.getsize(os.path.join(out, o))) for o in outs])
