"""`report --html` opened in a real browser (Debian's headless Chromium): the page renders, its figures
decode, and nothing goes to the console. .ci/run installs Chromium; on another machine: apt-get install chromium."""

import subprocess

import matplotlib.image
import numpy as np
from typer.testing import CliRunner

from s2s.cli import app

from test_report import _run_dir

CHROMIUM = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]

# Added to a copy of the page, by the test: once loaded, the title says how each image decoded, and any error
PROBE = """<script>
const errors = [];
window.addEventListener("error", e => errors.push(String(e.message || e.target?.src?.slice(0, 40))), true);
window.addEventListener("load", () => {
  const imgs = [...document.images].map(i => i.complete && i.naturalWidth > 0 ? `${i.naturalWidth}x${i.naturalHeight}` : "broken");
  document.title = "PROBE " + JSON.stringify({imgs, errors, height: document.body.scrollHeight});
});
</script>"""


def _chromium(*args, cwd):
    return subprocess.run([*CHROMIUM, f"--user-data-dir={cwd / 'profile'}", "--enable-logging=stderr", "--v=0", *args],
                          capture_output=True, text=True, timeout=120, cwd=cwd)


def test_report_page_renders_in_chromium_with_its_figures(tmp_path, tiny_model_dir):
    import json
    import re

    out, _ = _run_dir(tmp_path, "a", ["Bonjour.", "J'aime les chats.", "Same text", None], model=tiny_model_dir)
    page = tmp_path / "report.html"
    assert CliRunner().invoke(app, ["report", str(out), "--html", str(page)]).exit_code == 0
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))

    dom = _chromium("--virtual-time-budget=10000", "--dump-dom", probed.as_uri(), cwd=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = json.loads(re.search(r"<title>PROBE (.*?)</title>", dom.stdout).group(1).replace("&quot;", '"'))
    assert found["errors"] == [] and len(found["imgs"]) == 3 and "broken" not in found["imgs"], found
    assert all(int(size.split("x")[0]) >= 300 for size in found["imgs"])  # drawn at their size, not as icons

    shot = tmp_path / "shot.png"
    run = _chromium(f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri(), cwd=tmp_path)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() + dom.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2400, 1280)
    # a page with text and three figures, not a blank one: many distinct colours, most of it not background
    colours = np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 200
