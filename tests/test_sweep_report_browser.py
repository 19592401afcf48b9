"""The sweep report in a real browser: headless Chromium loads report.html from disk, every image
(the embedded PNGs and the SVG files beside the page) must decode, and a screenshot must show a
page. Skips, saying why, where Chromium is not installed (Debian: `apt-get install chromium`),
except under CI=true, where that fails (tests/required_service.py).

The same check by hand (what the test runs):
    chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
      --disable-component-update --disable-sync --no-first-run --user-data-dir=/tmp/chr \
      --screenshot=report.png --window-size=1200,2000 file://$PWD/runs/sweeps/sr/report/report.html
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pytest
from PIL import Image
from required_service import require
from test_sweep_support import run_inprocess, write_sweep

from sqzexplore.sweep.params import categorical
from sqzexplore.sweep.report import build_report

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
pytestmark = [
    pytest.mark.slow,  # each Chromium start takes seconds
    *require(
        None if CHROMIUM else "no Chromium to render the report in (apt-get install chromium)"
    ),
]

# Appended to a copy of the page: after load, list every image that did not decode.
IMAGE_CHECK = """<script>
window.addEventListener('load', () => {
  const images = [...document.images];
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0))
                       .map(i => i.getAttribute('src').slice(0, 80));
  const out = document.createElement('pre');
  out.id = 'image-check';
  out.textContent = JSON.stringify({total: images.length, broken: broken});
  document.body.appendChild(out);
});
</script>"""


def chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def image_check(tmp_path, page) -> dict:
    """{'total': n, 'broken': [src, ...]} of `page` as Chromium loads it (the probe sits next
    to the page, so relative links resolve as they do for the page itself)."""
    probe = page.with_name(f"probe-{page.name}")
    probe.write_text(page.read_text().replace("</body>", IMAGE_CHECK + "</body>"))
    done = chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="image-check">(.*?)</pre>', done.stdout, re.S)
    assert found, f"no result from Chromium (rc {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


@pytest.fixture(scope="module")
def report_page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    path = write_sweep(
        tmp / "b.py",
        name="browser_demo",
        space={
            "model.squeeze_ratio": categorical(0.125, 0.25, 0.5, 1.0),
            "model.bypass": categorical("none", "simple"),
        },
        seeds=2,
    )
    sweep_dir, _ = run_inprocess(path, tmp / "w")
    out = build_report(sweep_dir, echo=lambda s: None)
    return sweep_dir.report / "report.html", out


def test_every_image_of_the_report_decodes_in_chromium(tmp_path, report_page):
    page, out = report_page
    result = image_check(tmp_path, page)
    assert result == {"total": len(out["figures"]), "broken": []}
    # The SVG files the page links to are images a browser draws too.
    svg_page = page.with_name("svg-check.html")
    svg_page.write_text(
        "<!doctype html><html><body>"
        + "".join(f"<img src='{p.split('/')[-1]}'>" for p in out["svg"])
        + "</body></html>"
    )
    assert image_check(tmp_path, svg_page) == {"total": len(out["svg"]), "broken": []}


def test_the_check_fails_on_a_broken_image(tmp_path, report_page):
    page, out = report_page
    broken = page.with_name("broken.html")
    broken.write_text(
        page.read_text().replace("<h2>Summary</h2>", "<img src='data:image/png;base64,AAAA'>", 1)
    )
    result = image_check(tmp_path, broken)
    assert result["total"] == len(out["figures"]) + 1
    assert result["broken"] == ["data:image/png;base64,AAAA"]


def test_a_screenshot_of_the_report_shows_a_page(tmp_path, report_page):
    page, _ = report_page
    shot = tmp_path / "report.png"
    done = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri())
    assert shot.is_file(), done.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1200, 2000)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, tables and plots, not a blank page


def test_learning_curves_and_labelled_axes_in_chromium(tmp_path, report_page):
    """The page Chromium renders has the learning-curve figure, decoded, and the SVG figures
    Chromium parses carry their axis labels and tick labels as text."""
    page, out = report_page
    dom = chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", page.as_uri()).stdout
    assert "<h2>Learning curves</h2>" in dom and "sr=0.125 bypass=none" in dom
    probe = page.with_name("curves-check.html")
    probe.write_text(
        "<!doctype html><html><body><img src='learning_curves.svg'>"
        "<img src='accuracy_vs_macs.svg'></body></html>"
    )
    assert image_check(tmp_path, probe) == {"total": 2, "broken": []}
    for name, wanted in (("learning_curves", "training step"), ("accuracy_vs_macs", "MACs")):
        svg = page.with_name(f"{name}.svg")
        parsed = chromium(tmp_path, "--dump-dom", svg.as_uri()).stdout
        texts = [html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", parsed)]
        assert any(wanted in t for t in texts), texts[:20]
        ticks = [t.strip() for t in texts if re.fullmatch(r"\s*\d+(\.\d+)?[kM]?\s*", t)]
        assert len(ticks) >= 4, texts[:30]


# Appended to a copy of the page: after load, list what sticks out of the page sideways.
OVERFLOW_CHECK = """<script>
window.addEventListener('load', () => {
  const doc = document.documentElement;
  const over = [...document.querySelectorAll('table, pre, figure, img, p, h1, h2, h3')]
    .filter(e => !e.closest('.scroll') && e.getBoundingClientRect().right > doc.clientWidth + 1)
    .map(e => e.tagName + ': ' + e.textContent.slice(0, 40));
  const out = document.createElement('pre');
  out.id = 'overflow-check';
  out.textContent = JSON.stringify({scroll: doc.scrollWidth, width: doc.clientWidth, over: over});
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.parametrize("width", [1200, 800, 480])
def test_nothing_overflows_the_page_sideways(tmp_path, report_page, width):
    """Wide tables (the Pareto front, every point) scroll inside their own box, long values
    (the sweep directory) wrap: the page itself never scrolls sideways, on a laptop or a phone."""
    page, _ = report_page
    probe = page.with_name(f"overflow-{width}.html")
    probe.write_text(page.read_text().replace("</body>", OVERFLOW_CHECK + "</body>"))
    done = chromium(
        tmp_path,
        f"--window-size={width},1200",
        "--virtual-time-budget=10000",
        "--dump-dom",
        probe.as_uri(),
    )
    found = re.search(r'<pre id="overflow-check">(.*?)</pre>', done.stdout, re.S)
    assert found, f"no result from Chromium (rc {done.returncode}): {done.stderr[-2000:]}"
    result = json.loads(html.unescape(found.group(1)))
    assert result["over"] == [] and result["scroll"] <= result["width"], result


def test_a_screenshot_of_the_tensorboard_hparams_page(tmp_path, report_page):
    """TensorBoard's HParams page of the sweep (`sqz sweep report --tensorboard`) renders in
    Chromium (a documented look: one row per design point, typed filters; the rows themselves
    are checked through TensorBoard's backend in test_sweep_tensorboard.py)."""
    from tensorboard import program

    from sqzexplore.sweep import cli
    from sqzexplore.sweep import sweepdir as sd

    page, _ = report_page
    sweep_dir = sd.SweepDir(page.parent.parent)
    assert cli.main(["report", str(sweep_dir.root), "--tensorboard", "--quiet"]) == 0
    tb = program.TensorBoard()
    tb.configure(argv=[None, "--logdir", str(sweep_dir.root / "tensorboard"), "--port", "0"])
    url = tb.launch()
    shot = tmp_path / "hparams.png"
    done = chromium(
        tmp_path,
        "--window-size=1400,900",
        "--virtual-time-budget=20000",
        f"--screenshot={shot}",
        url + "#hparams",
    )
    assert shot.is_file(), done.stderr[-2000:]
    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50
