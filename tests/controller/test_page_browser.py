"""The status page in a real browser: headless Chromium loads it from the HttpServer,
dumps the DOM it parsed and takes a screenshot. The DOM must show the deployment, every
instance and the conditions (and the <script> of a commit subject as text, not as an
element); the screenshot must be the requested size, not blank, light, and coloured
where the page colours states. A copy is left at SCREENSHOT for people to look at.

Then the picture (SPEC §12) of a healthy, a failing and a rolling deployment, from the
crafted documents of `test_page_picture.py`: one linked node per instance in the SVG
Chromium parsed, the instance in trouble and the failed machine marked and drawn in
their colours, and no request refused by the page's Content-Security-Policy. Their
screenshots are left as /tmp/reconciler-page-<case>.png; with RECONCILER_DOCS_SCREENSHOT=1
the failing one also replaces `docs/status-page.png`, the README's picture."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.controller.test_http import COMMIT_URL, FakeView, sample_view, serving
from tests.controller.test_page_picture import Elements, failing, healthy, rolling

pytestmark = pytest.mark.slow

SCREENSHOT = Path("/tmp/reconciler-status-page.png")
WIDTH, HEIGHT = 1280, 1024
GOOD_PILL, BAD_PILL, WHITE = bytes.fromhex("dafbe1"), bytes.fromhex("ffebe9"), b"\xff\xff\xff"
TROUBLE_RED, REPLACING_BLUE = bytes.fromhex("cf222e"), bytes.fromhex("218bff")  # page.css
DOCS_SCREENSHOT = Path(__file__).parents[2] / "docs" / "status-page.png"
DOCS_WIDTH, DOCS_HEIGHT = 1280, 700
Document = tuple[dict[str, Any], list[dict[str, Any]]]
CASES: dict[str, Callable[[datetime], Document]] = {
    "healthy": healthy,
    "failing": failing,
    "rolling": rolling,
}


@dataclass
class LoggingView(FakeView):
    """FakeView with a log tail per instance it lists."""

    def instance_log(self, deployment: str, key: str) -> str | None:
        listed = {i["key"] for i in self.statuses.get(deployment, {}).get("instances", [])}
        return f"--- the tail of {key}'s log\nGET /health answered 500\n" if key in listed else None


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        reason = "chromium is not installed (Debian: apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}, and CI=true forbids skipping")
        pytest.skip(reason)
    return found


def browse(binary: str, url: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium on url with a profile of its own; its output (the console,
    Content-Security-Policy violations included, on stderr)."""
    home.mkdir()
    command = [
        binary,
        "--headless",
        "--no-sandbox",  # we may be root, where the sandbox refuses to start
        "--disable-gpu",
        "--no-proxy-server",
        f"--user-data-dir={home / 'profile'}",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--window-size={WIDTH},{HEIGHT}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
        url,
    ]
    env = {**os.environ, "HOME": str(home)}  # keep its caches out of the real home
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def png_pixels(data: bytes) -> tuple[int, int, Counter[bytes]]:
    """Width, height and how many pixels have each colour, of an 8-bit RGB(A), not
    interlaced PNG (what Chromium writes), decoded with zlib alone."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, []
    width = height = depth = colour_type = interlace = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
    assert (depth, interlace) == (8, 0) and colour_type in (2, 6)
    bpp = 3 if colour_type == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    previous = bytearray(stride)
    colours: Counter[bytes] = Counter()
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):  # undo the row's filter (PNG spec §9)
            left = line[i - bpp] if i >= bpp else 0
            up = previous[i]
            up_left = previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                nearest = left if pa <= pb and pa <= pc else up if pb <= pc else up_left
                line[i] = (line[i] + nearest) & 255
        colours.update(bytes(line[x : x + 3]) for x in range(0, stride, bpp))
        previous = line
    return width, height, colours


def test_the_status_page_in_chromium(tmp_path: Path) -> None:
    binary = chromium()
    view = sample_view()
    status = view.statuses["local"]
    shot = tmp_path / "page.png"
    with serving(view, commit_url=COMMIT_URL) as url:
        dom = browse(binary, url + "/", tmp_path / "dom", "--dump-dom").stdout
        browse(binary, url + "/", tmp_path / "shot", f"--screenshot={shot}")

    assert "<section" in dom and ">local</a>" in dom
    for instance in status["instances"]:
        assert instance["key"] in dom
    for condition in ("Ready", "Reconciling", "Stalled", "AttemptFailed", "NotStalled"):
        assert condition in dom
    assert "<script" not in dom  # the subject's tag stayed text
    assert "Pass a flag the staff service does not know &lt;script&gt;" in dom

    shutil.copyfile(shot, SCREENSHOT)
    width, height, colours = png_pixels(shot.read_bytes())
    assert (width, height) == (WIDTH, HEIGHT)
    assert len(colours) > 100, "the screenshot is (nearly) blank"
    assert colours.most_common(1)[0][0] == WHITE, "dark on light"
    assert colours[GOOD_PILL] > 0 and colours[BAD_PILL] > 0, "states are coloured"


@pytest.mark.parametrize("case", CASES)
def test_the_picture_in_chromium(case: str, tmp_path: Path) -> None:
    binary = chromium()
    status, history = CASES[case](datetime.now(UTC))
    view = FakeView({"production": status}, {"production": history})
    shot = tmp_path / "page.png"
    with serving(view, commit_url=COMMIT_URL) as url:
        done = browse(binary, url + "/", tmp_path / "dom", "--dump-dom")
        browse(binary, url + "/", tmp_path / "shot", f"--screenshot={shot}")

    found = Elements(done.stdout)
    assert len(found.having("svg", "picture")) == 1
    nodes = found.having("a", "node")
    assert sorted(a["data-key"] for a in nodes) == sorted(i["key"] for i in status["instances"])
    for a in nodes:
        assert a["href"] == f"/api/deployments/production/instances/{a['data-key']}/log"
    assert "Content Security Policy" not in done.stderr, done.stderr[-2000:]
    trouble = [a["data-key"] for a in found.having("a", "trouble")]
    failed = [g["data-machine"] for g in found.having("g", "m-failed")]
    badges = found.having("g", "badge")

    shutil.copyfile(shot, f"/tmp/reconciler-page-{case}.png")
    width, height, colours = png_pixels(shot.read_bytes())
    assert (width, height) == (WIDTH, HEIGHT)
    assert colours.most_common(1)[0][0] == WHITE
    if case == "healthy":
        assert (trouble, failed, badges) == ([], [], [])
        assert colours[GOOD_PILL] > 0 and colours[TROUBLE_RED] == 0
    elif case == "failing":
        assert (trouble, failed) == (["staff-service@eu-2"], ["eu-3"])
        assert colours[TROUBLE_RED] > 0 and colours[BAD_PILL] > 0
        if os.environ.get("RECONCILER_DOCS_SCREENSHOT") == "1":
            docs_screenshot(binary, status, history, tmp_path / "docs")
    else:
        assert (trouble, failed, len(badges)) == ([], [], 3)
        assert colours[REPLACING_BLUE] > 0 and colours[TROUBLE_RED] == 0


def docs_screenshot(
    binary: str, status: dict[str, Any], history: list[dict[str, Any]], home: Path
) -> None:
    """The README's picture: the top of the page (the picture and what is wrong), small
    enough to keep in the repository."""
    view = FakeView({status["deployment"]: status}, {status["deployment"]: history})
    shot = home.with_suffix(".png")
    with serving(view, commit_url=COMMIT_URL) as url:
        size = f"--window-size={DOCS_WIDTH},{DOCS_HEIGHT}"
        browse(binary, url + "/", home, f"--screenshot={shot}", size)
    data = shot.read_bytes()
    assert len(data) < 200_000, f"{len(data)} bytes is too large for the repository"
    DOCS_SCREENSHOT.write_bytes(data)


def test_a_node_links_to_its_log_behind_the_same_token(tmp_path: Path) -> None:
    """The page and the log are behind the API token; a browser that sent it (Basic
    auth, the token as the password) for the page gets the log at the node's link."""
    binary = chromium()
    status, history = failing(datetime.now(UTC))
    view = LoggingView({"production": status}, {"production": history})
    with serving(view, api_token="s3cret-token") as url:
        authed = url.replace("http://", "http://person:s3cret-token@")
        page = browse(binary, authed + "/", tmp_path / "page", "--dump-dom").stdout
        (href,) = [a["href"] for a in Elements(page).having("a", "trouble")]
        log = browse(binary, authed + href, tmp_path / "log", "--dump-dom").stdout
        refused = browse(binary, url + href, tmp_path / "refused", "--dump-dom").stdout
    assert "--- the tail of staff-service@eu-2's log" in log
    assert "GET /health answered 500" in log
    assert "tail of" not in refused
