#!/usr/bin/env python3
"""The run report (O2) in a real browser: `dsv3 report` of a run compared with a second one is
rendered by headless Chromium (Debian's `chromium`) to PNG and to its DOM.

- The DOM has every chart (loss, MTP loss, lr, grad norm, tokens/s, MFU, memory, expert load
  max/mean, one heatmap per MoE layer), each with data (points or cells).
- The PNG shows them: the main run's colour (#1f77b4) and the compared run's (#d62728) cover
  many pixels, the heatmaps' blue and red shades appear, and the page is not blank.
- The page loads nothing from elsewhere (no script, no src/href).

Needs chromium and python3-pil (scripts/install_deps.sh); fails without them, never skips.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DSV3 = os.environ.get("DSV3_BIN", os.path.join(REPO, "build", "dsv3"))

passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
        print("ok    " + what)
    else:
        failed += 1
        print("FAIL  " + what)


def main():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        print("FAIL: chromium is not installed (run scripts/install_deps.sh)")
        sys.exit(1)
    try:
        from PIL import Image
    except ImportError:
        print("FAIL: python3-pil is not installed (run scripts/install_deps.sh)")
        sys.exit(1)
    tmp = tempfile.mkdtemp(prefix="dsv3_report_")
    common = ["--preset", "debug", "--batch", "4", "--seq_len", "32", "--sample_tokens", "0",
              "--peak_gflops", "100", "--steps", "40", "--eval_every", "10", "--save_every", "20"]
    for name, extra in (("a", []), ("b", ["--lr", "3e-3"])):
        p = subprocess.run([DSV3, "train"] + common + extra + ["--out", os.path.join(tmp, name)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            print(p.stdout + p.stderr)
            sys.exit(1)
    html = os.path.join(tmp, "report.html")
    p = subprocess.run([DSV3, "report", os.path.join(tmp, "a"), "--compare", os.path.join(tmp, "b"),
                        "--out", html], capture_output=True, text=True)
    check(p.returncode == 0, "dsv3 report ran: " + (p.stdout + p.stderr).strip()[-300:])
    text = open(html).read()
    check(not re.search(r"<script|(src|href)=", text), "self-contained (no script, src or href)")

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--user-data-dir=" + os.path.join(tmp, "profile")]
    dom = subprocess.run([chromium] + flags + ["--dump-dom", "file://" + html], capture_output=True,
                         text=True, timeout=180).stdout
    charts = re.findall(r'<svg class="chart[^"]*" data-chart="([^"]+)" data-(points|cells)="(\d+)"', dom)
    ids = {c[0]: int(c[2]) for c in charts}
    want = ["loss", "mtp_loss", "lr", "grad_norm", "tokens_per_s", "mfu", "memory", "load_max",
            "expert_load_layer 1", "expert_load_mtp 1"]
    for w in want:
        check(ids.get(w, 0) > 0, "the browser's DOM has chart %s with data (%s)" % (w, ids.get(w)))

    png = os.path.join(tmp, "report.png")
    subprocess.run([chromium] + flags + ["--screenshot=" + png, "--window-size=1280,5200",
                                         "file://" + html], capture_output=True, timeout=180)
    check(os.path.exists(png), "screenshot written")
    if os.path.exists(png):
        img = Image.open(png).convert("RGB")
        px = list(img.getdata())
        def count(rgb, tol=12):
            return sum(1 for p in px if all(abs(p[i] - rgb[i]) <= tol for i in range(3)))
        blue, red = count((31, 119, 180)), count((214, 39, 40))
        check(blue > 1500, "the main run's curves are drawn (%d pixels)" % blue)
        check(red > 800, "the compared run's curves are drawn (%d pixels)" % red)
        # heatmap shades: bluish-white (under-loaded) and reddish-white (over-loaded) cells
        under = sum(1 for p in px if p[2] > p[0] + 30 and p[2] > 200 and p[0] > 60)
        over = sum(1 for p in px if p[0] > p[2] + 30 and p[0] > 220 and p[1] > 60)
        check(under > 300 and over > 300, "heatmap cells are drawn (%d blue, %d red pixels)" % (under, over))
        check(len(set(px)) > 200, "the page is not blank (%d colours)" % len(set(px)))
        keep = os.environ.get("DSV3_REPORT_PNG")
        if keep:
            shutil.copy(png, keep)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
