"""Notebook 03's interpolation widget in a real browser: JupyterLab + headless Chromium (issue #9).

The unit tests (``tests/test_widgets.py``) drive the widget's Python side; this one checks
what a reader sees. It starts JupyterLab on 127.0.0.1 (a free port, a random token) over a
temporary folder holding a copy of notebook 03, with ``MCM_SMOKE=1`` so the notebook runs
in smoke mode, opens it in headless Chromium (Debian's ``chromium``, driven by Playwright
through ``executable_path``; Playwright's own browser downloads are never used), runs every
cell from the menu (Run > Run All Cells), then

1. finds the widget (a rendered widget with a slider, not its text fallback) and its figure;
2. moves the mask-ratio slider with the keyboard (focus the handle, ArrowLeft);
3. sets the ``blue`` concept to 1 with its toggle button;
4. presses "resample mask";

and after each action waits for the figure's ``<img>`` to change. Screenshots and the
figures before / after go to ``outputs/browser/`` (``$MCM_BROWSER_OUT``); the widget's
screenshot is copied to ``figures/09_browser_widget.png`` (``$MCM_FIGURES_DIR``).

Skipped when Playwright or Chromium is missing (``bash scripts/setup_browser.sh`` installs
both); with ``MCM_REQUIRE_BROWSER=1`` (``make browser-test``) it fails instead. Every wait
polls for a condition with a generous deadline; ``MCM_BROWSER_TIMEOUT_SCALE`` multiplies them
all. The server (with its kernel) and the browser are shut down in ``finally`` blocks.
"""
from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "03_mask_ratio_interpolation.ipynb"
OUT_DIR = Path(os.environ.get("MCM_BROWSER_OUT") or ROOT / "outputs" / "browser")
FIGURE_NAME = "09_browser_widget.png"
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser")  # Debian's binary first
SCALE = float(os.environ.get("MCM_BROWSER_TIMEOUT_SCALE", "1"))
SERVER_START_S = 120 * SCALE
PAGE_LOAD_S = 180 * SCALE
RUN_ALL_S = 900 * SCALE  # smoke mode is ~20 s of CPU; a loaded 2-core machine can be many times slower
ACTION_S = 180 * SCALE  # one widget change: a round trip to the kernel and one render
CONCEPT = "blue"  # the toggle the test clicks (to state 1)
VIEWPORT = {"width": 1400, "height": 1000}  # made taller for the widget's screenshot

T = TypeVar("T")


# =========================================================================== requirements
def find_chromium() -> str | None:
    """``$MCM_CHROMIUM``, else Debian's chromium binary, else ``chromium`` on PATH."""
    if os.environ.get("MCM_CHROMIUM"):
        path = os.environ["MCM_CHROMIUM"]
        return path if os.access(path, os.X_OK) else None
    for name in CHROMIUM_CANDIDATES:
        path = name if os.path.isabs(name) else shutil.which(name)
        if path and os.access(path, os.X_OK):
            return path
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    """The browser binary; skip (or fail under ``MCM_REQUIRE_BROWSER=1``) when something is missing."""
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("Playwright for Python is not installed in this environment")
    path = find_chromium()
    if path is None:
        where = os.environ.get("MCM_CHROMIUM") or "/usr/lib/chromium/chromium or chromium on PATH"
        missing.append(f"no Chromium binary ({where})")
    if missing:
        reason = "; ".join(missing) + ": run `bash scripts/setup_browser.sh` (apt chromium + pip playwright)"
        if os.environ.get("MCM_REQUIRE_BROWSER", "").strip().lower() in ("1", "true", "yes", "on"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return path


# =========================================================================== helpers
def wait_until(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.25) -> T:
    """Poll ``condition`` until it returns something truthy; -> that value, or AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = condition()
        except Exception as error:  # a page or server in the middle of a change: try again
            last = f"{type(error).__name__}: {error}"
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last seen: {last!r}")
        time.sleep(interval)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of PNG bytes; AssertionError unless they are a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"not a PNG: {data[:16]!r}"
    return struct.unpack(">II", data[16:24])


def src_png(src: str | None) -> bytes:
    """The PNG bytes of an ``<img src="data:image/png;base64,...">``."""
    prefix = "data:image/png;base64,"
    assert src and src.startswith(prefix), f"the figure is not an inline PNG: {str(src)[:60]!r}"
    return base64.b64decode(src[len(prefix):])


@dataclass
class Lab:
    """A running JupyterLab server."""

    url: str
    token: str
    root: Path
    log: Path

    def api(self, path: str, method: str = "GET", timeout: float = 10) -> Any:
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def kernel_state(self, notebook: str) -> str | None:
        """The execution state the server reports for ``notebook``'s kernel (None: no session yet)."""
        for session in self.api("/api/sessions"):
            if session.get("path") == notebook and session.get("kernel"):
                return session["kernel"].get("execution_state")
        return None

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"


def write_settings(folder: Path) -> None:
    """JupyterLab user settings for the test: every cell in the DOM, no news or update pop-ups."""
    settings = {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                             "checkForUpdates": False},
    }
    for name, values in settings.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


@contextmanager
def jupyterlab(work: Path) -> Iterator[Lab]:
    """JupyterLab over ``work/root`` on 127.0.0.1 with a token; always shut down, kernels included."""
    root, runtime, settings = work / "root", work / "runtime", work / "settings"
    for folder in (root, runtime, settings, work / "workspaces", work / "figures"):
        folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(NOTEBOOK, root / NOTEBOOK.name)
    write_settings(settings)
    token = secrets.token_hex(24)
    env = {
        **os.environ,
        "MCM_SMOKE": "1",  # the notebook's smoke mode
        "MCM_FIGURES_DIR": str(work / "figures"),  # the notebook's own figures stay out of the repo
        "JUPYTER_RUNTIME_DIR": str(runtime),  # where the server writes its port: ours alone
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(work / "workspaces"),
        # No user config, data or IPython profile leaks in (the python3 kernel is found in sys.prefix).
        "JUPYTER_CONFIG_DIR": str(work / "config"),
        "JUPYTER_DATA_DIR": str(work / "data"),
        "IPYTHONDIR": str(work / "ipython"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),  # polite to a shared 2-core machine
    }
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", "--port=0",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    log = work / "server.log"
    lab: Lab | None = None
    with open(log, "wb") as log_file:
        # Its own process group: the kernels it starts can be ended with it if a shutdown fails.
        server = subprocess.Popen(command, cwd=root, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            def started() -> Lab | None:
                if server.poll() is not None:  # pytest.fail is a BaseException: wait_until lets it through
                    pytest.fail(f"JupyterLab exited with {server.returncode}:\n{log.read_text()[-3000:]}",
                                pytrace=False)
                files = list(runtime.glob("jpserver-*.json"))
                if not files:
                    return None
                info = json.loads(files[0].read_text())  # port 0: the port it chose is written here
                candidate = Lab(f"http://127.0.0.1:{info['port']}", token, root, log)
                return candidate if candidate.api("/api/status") is not None else None

            lab = wait_until(started, SERVER_START_S, "JupyterLab to answer /api/status", interval=0.5)
            yield lab
        finally:
            stop_server(server, lab)


def stop_server(server: subprocess.Popen, lab: Lab | None) -> None:
    """Shut the server down (it ends its kernels), then end its process group if anything is left.

    A server that answers gets ``POST /api/shutdown``; one that does not (yet) gets SIGTERM,
    which it also handles by shutting its kernels down; SIGKILL after 30 s.
    """
    if server.poll() is None:
        try:
            if lab is None:
                raise OSError("not started")
            lab.api("/api/shutdown", method="POST")
        except (OSError, ValueError):  # urllib's errors are OSErrors
            server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=15)
    try:  # kernels left behind by a server that did not shut down cleanly
        os.killpg(server.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@contextmanager
def chromium_page(executable: str) -> Iterator[Any]:
    """A headless Chromium page (``VIEWPORT``); the browser is always closed."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=["--disable-dev-shm-usage", "--disable-gpu"])
        try:
            context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
            page = context.new_page()
            page.set_default_timeout(60_000 * SCALE)
            yield page
        finally:
            browser.close()


# =========================================================================== the page
KERNEL_STATUS = '.jp-StatusBar-TextItem[title^="Change kernel"]'  # "Python 3 (mcm) | Idle"
PROMPTS = ".jp-Notebook .jp-CodeCell .jp-InputArea-prompt"


def kernel_idle(page: Any, lab: Lab, notebook: str) -> bool:
    """Idle in the status bar and on the server."""
    status = page.locator(KERNEL_STATUS)
    return (status.count() == 1 and status.inner_text().strip().endswith("| Idle")
            and lab.kernel_state(notebook) == "idle")


def prompts(page: Any) -> list[str]:
    """The code cells' input prompts: ``[ ]:``, ``[*]:`` or ``[n]:``."""
    return [p.strip() for p in page.locator(PROMPTS).all_inner_texts()]


def run_all_cells(page: Any, lab: Lab, notebook: str, code_cells: int) -> None:
    """Run > Run All Cells from the menu bar, then wait for the run to finish; fail on an error."""
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    wait_until(lambda: any(p != "[ ]:" for p in prompts(page)), 60 * SCALE, "Run All Cells to start")

    def finished() -> list[str] | None:  # nothing queued ([*]) and the kernel idle: done or stopped
        now = prompts(page)
        return now if "[*]:" not in now and kernel_idle(page, lab, notebook) else None

    done = wait_until(finished, RUN_ALL_S, "every cell to run (no [*] prompt, kernel idle)", interval=1.0)
    errors = [t for t in page.locator(".jp-OutputArea-output").all_inner_texts() if "Traceback" in t]
    assert not errors, "a cell raised in JupyterLab:\n" + errors[0][-3000:]
    assert len(done) == code_cells and all(re.fullmatch(r"\[\d+\]:", p) for p in done), \
        f"not every code cell ran: {done}"


def figure_src(img: Any) -> str | None:
    """The figure's ``src`` once the image has loaded (None before)."""
    if img.count() != 1 or not img.evaluate("e => e.complete && e.naturalWidth > 0"):
        return None
    return img.get_attribute("src")


def wait_figure_change(img: Any, before: str, what: str) -> str:
    """Wait until the widget's figure is a new, loaded PNG; -> its ``src``."""
    def changed() -> str | None:
        src = figure_src(img)
        return src if src and src != before else None

    return wait_until(changed, ACTION_S, f"the widget's figure to change after {what}")


# =========================================================================== the test
def test_notebook_03_widget_responds_in_jupyterlab(chromium, tmp_path):
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "failure.png").unlink(missing_ok=True)  # from an earlier failed run
    notebook = json.loads(NOTEBOOK.read_text())
    code_cells = sum(c["cell_type"] == "code" for c in notebook["cells"])
    timings: dict[str, float] = {}
    console: list[str] = []
    start = time.perf_counter()

    def lap(name: str) -> None:
        timings[name] = round(time.perf_counter() - start - sum(timings.values()), 1)

    with jupyterlab(tmp_path) as lab, chromium_page(chromium) as page:
        lap("server and browser start")
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type in ("error", "warning")
                else None)
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        try:
            page.goto(f"{lab.url}/lab/tree/{NOTEBOOK.name}?reset&token={lab.token}", wait_until="domcontentloaded")
            wait_until(lambda: page.locator(".jp-Notebook .jp-Cell").count() == len(notebook["cells"]),
                       PAGE_LOAD_S, f"the notebook's {len(notebook['cells'])} cells to render")
            wait_until(lambda: kernel_idle(page, lab, NOTEBOOK.name), PAGE_LOAD_S, "the kernel to start (Idle)")
            lap("page and kernel")

            run_all_cells(page, lab, NOTEBOOK.name, code_cells)
            lap("run all cells")

            # 1. The widget: rendered by the widget manager (a slider, toggles, an output with a PNG).
            # (A `has=` locator is matched inside the outer element: keep it to the slider itself.)
            slider = page.locator(".widget-hslider")
            view = page.locator(".widget-vbox").filter(has=slider)
            wait_until(lambda: view.count() == 1 and view.is_visible(), ACTION_S, "the widget to render")
            output_item = page.locator(".jp-OutputArea-output").filter(has=slider)
            assert output_item.locator(":scope > .widget-vbox").count() == 1, "the output is not the widget's view"
            cell = page.locator(".jp-CodeCell").filter(has=slider)
            cell_text = cell.inner_text()
            for fallback in ("Error displaying widget", "Loading widget", "VBox(children"):
                assert fallback not in cell_text, f"the widget shows {fallback!r} instead of the controls"
            labels = view.locator(".widget-toggle-buttons .widget-label").all_inner_texts()
            assert CONCEPT in labels, f"no {CONCEPT!r} toggle among the widget's concepts {labels}"
            cut = view.locator("button, .widget-label").evaluate_all(
                "els => els.filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent.trim())")
            assert not cut, f"labels cut off by their width (shown with an ellipsis): {sorted(set(cut))}"
            img = view.locator(".widget-output img")
            first = wait_until(lambda: figure_src(img), ACTION_S, "the widget's figure to load")
            size = png_size(src_png(first))
            (OUT_DIR / "03_figure_start.png").write_bytes(src_png(first))

            # 2. The mask-ratio slider, from the keyboard: one step down.
            readout = view.locator(".widget-hslider .widget-readout")
            ratio = float(readout.inner_text())
            handle = view.locator(".widget-hslider .noUi-handle")
            handle.focus()
            handle.press("ArrowLeft")
            expected = f"{ratio - 0.05:.2f}"
            wait_until(lambda: readout.inner_text().strip() == expected, ACTION_S,
                       f"the slider's readout to show {expected}")
            after_slider = wait_figure_change(img, first, f"moving the slider to {expected}")
            (OUT_DIR / "03_figure_after_slider.png").write_bytes(src_png(after_slider))
            lap("slider")

            # 3. One concept's toggle: blue = 1.
            row = view.locator(".widget-toggle-buttons").filter(
                has=page.locator(".widget-label", has_text=re.compile(rf"^{CONCEPT}$")))
            button = row.locator("button.widget-toggle-button", has_text=re.compile(r"^1$"))
            button.click()
            wait_until(lambda: "mod-active" in (button.get_attribute("class") or ""), ACTION_S,
                       f"the {CONCEPT} = 1 button to be active")
            after_toggle = wait_figure_change(img, after_slider, f"setting {CONCEPT} = 1")
            (OUT_DIR / "03_figure_after_toggle.png").write_bytes(src_png(after_toggle))
            lap("toggle")

            # 4. The resample button: new mask noise.
            view.locator("button.widget-button", has_text="resample mask").click()
            after_resample = wait_figure_change(img, after_toggle, "pressing resample mask")
            lap("resample")

            # The callbacks raised nothing (an error would replace the figure with stderr text),
            # the figure kept its size, the kernel is idle again.
            assert view.locator('.widget-output [data-mime-type="application/vnd.jupyter.stderr"]').count() == 0
            assert png_size(src_png(after_resample)) == size
            wait_until(lambda: kernel_idle(page, lab, NOTEBOOK.name), ACTION_S, "the kernel to be idle again")
            widget_errors = [m for m in console if "pageerror" in m or re.search(r"widget|comm", m, re.I)]
            assert not widget_errors, "the browser reported widget errors:\n" + "\n".join(widget_errors)

            # The screenshot a reader would see: the widget cell, after the three actions, whole:
            # the window is made tall enough for the cell, which is then scrolled to the top.
            height = cell.evaluate("e => e.getBoundingClientRect().height")
            page.set_viewport_size({"width": VIEWPORT["width"], "height": max(VIEWPORT["height"], int(height) + 300)})
            fits = ("e => { e.scrollIntoView({block: 'start'}); const r = e.getBoundingClientRect();"
                    " const p = e.closest('.jp-WindowedPanel-outer, .jp-Notebook').getBoundingClientRect();"
                    " return r.top >= p.top - 1 && r.bottom <= p.bottom + 1; }")
            wait_until(lambda: cell.evaluate(fits), ACTION_S, "the widget cell to fit the window")
            shot = OUT_DIR / "03_widget.png"
            cell.screenshot(path=str(shot))
            page.screenshot(path=str(OUT_DIR / "03_lab.png"))
            figures = Path(os.environ.get("MCM_FIGURES_DIR") or ROOT / "figures")
            figures.mkdir(parents=True, exist_ok=True)
            shutil.copy2(shot, figures / FIGURE_NAME)
            lap("screenshots")
        except BaseException as error:
            try:
                page.screenshot(path=str(OUT_DIR / "failure.png"), full_page=True)
            except Exception:
                pass
            if hasattr(error, "add_note"):
                error.add_note(f"screenshot: {OUT_DIR / 'failure.png'}\nbrowser console:\n"
                               + "\n".join(console[-30:]) + f"\nJupyterLab log:\n{lab.log_tail()}")
            raise
        finally:
            (OUT_DIR / "console.log").write_text("\n".join(console) + "\n")
    lap("shutdown")
    timings["total"] = round(time.perf_counter() - start, 1)
    (OUT_DIR / "timings.json").write_text(json.dumps(timings, indent=1) + "\n")
    print("browser test timings (s):", timings)
