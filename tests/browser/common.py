"""Shared helpers of the browser tests (tests/browser/*_test.py).

Stable API (other tests import it):

- ``parse_args(extra=None)`` -> argparse namespace with ``base``, ``shots``, ``chromedriver``,
  ``chromium``; ``extra(parser)`` may add options.
- ``new_driver(args, width=1280, height=900)`` -> headless Chromium (selenium 4) with the browser
  console captured. Every driver made here is screenshotted when a case fails, and quit at the end
  of ``run_cases``.
- ``Case(name, args)`` context manager / ``run_cases(args, [(name, fn), ...])``: runs each
  ``fn()`` (no arguments), on failure saves ``shots/<name>.png`` (``<name>-2.png``… for further
  drivers) and ``shots/<name>.console.txt``; ``run_cases`` prints the JSON summary
  ``{"ok": ..., "cases": [...]}`` as its last stdout line and exits 0 only if all passed.
- ``TcpProxy(target_host, target_port)``: threaded TCP forwarder on 127.0.0.1:0; ``.port``,
  ``.cut()`` (closes every open connection, keeps accepting), ``.pause()`` (cut, and refuse new
  connections until ``.resume()``), ``.close()``.
- ``api(base, method, path, body=None, token=None)`` -> ``(status, json_or_None)`` via urllib.
- ``wait_for(driver, fn, timeout=10, message="")``: WebDriverWait on ``fn(driver)``.
- ``tid(name)``: the CSS selector of ``[data-testid="name"]``.
"""

import argparse
import json
import os
import socket
import struct
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

_DRIVERS = []


def parse_args(extra=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="server base URL, e.g. http://127.0.0.1:18201")
    p.add_argument("--shots", default="shots", help="directory for failure screenshots")
    p.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    if extra:
        extra(p)
    args = p.parse_args()
    args.base = args.base.rstrip("/")
    return args


def new_driver(args, width=1280, height=900):
    opts = Options()
    opts.binary_location = args.chromium
    for a in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-timer-throttling",
        "--disable-renderer-backgrounding",
        "--disable-backgrounding-occluded-windows",
    ):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(executable_path=args.chromedriver), options=opts)
    d.set_page_load_timeout(20)
    d.set_script_timeout(20)
    d._qt_console = []
    _DRIVERS.append(d)
    return d


def console(driver):
    """Browser console lines seen so far (kept across calls)."""
    try:
        for e in driver.get_log("browser"):
            driver._qt_console.append(f"{e.get('level')} {e.get('message')}")
    except Exception:  # noqa: BLE001 - a dead driver has no log
        pass
    return driver._qt_console


def quit_all():
    while _DRIVERS:
        d = _DRIVERS.pop()
        try:
            d.quit()
        except Exception:  # noqa: BLE001
            pass


def tid(name):
    return f'[data-testid="{name}"]'


def wait_for(driver, fn, timeout=10, message=""):
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(fn, message)


def api(base, method, path, body=None, token=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, None


class Case:
    """``with Case(name, args) as c: ...`` — records the result; screenshots on failure."""

    def __init__(self, name, args):
        self.name = name
        self.args = args
        self.result = None

    def __enter__(self):
        self.t0 = time.monotonic()
        return self

    def __exit__(self, typ, exc, tb):
        secs = round(time.monotonic() - self.t0, 2)
        if exc is None:
            self.result = {"name": self.name, "ok": True, "seconds": secs}
            print(f"PASS {self.name} ({secs}s)", flush=True)
        else:
            msg = "".join(traceback.format_exception_only(typ, exc)).strip()
            self.result = {"name": self.name, "ok": False, "seconds": secs, "error": msg[:2000]}
            print(f"FAIL {self.name} ({secs}s): {msg}", flush=True)
            traceback.print_exception(typ, exc, tb, file=sys.stdout)
            self.save_evidence()
        return True  # the next case runs anyway

    def save_evidence(self):
        os.makedirs(self.args.shots, exist_ok=True)
        lines = []
        for i, d in enumerate(list(_DRIVERS)):
            suffix = "" if i == 0 else f"-{i + 1}"
            try:
                for j, h in enumerate(d.window_handles):
                    d.switch_to.window(h)
                    extra = "" if j == 0 else f"-w{j + 1}"
                    d.save_screenshot(os.path.join(self.args.shots, f"{self.name}{suffix}{extra}.png"))
            except Exception as e:  # noqa: BLE001
                lines.append(f"(no screenshot: {e})")
            lines.append(f"--- driver {i + 1}")
            lines.extend(console(d))
        with open(os.path.join(self.args.shots, f"{self.name}.console.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")


def run_cases(args, cases):
    """Runs ``[(name, fn), ...]``, prints the JSON summary last and exits 0 / 1."""
    results = []
    try:
        for name, fn in cases:
            with Case(name, args) as c:
                fn()
            results.append(c.result)
    finally:
        quit_all()
    ok = bool(results) and all(r["ok"] for r in results)
    print(json.dumps({"ok": ok, "cases": results}), flush=True)
    sys.exit(0 if ok else 1)


class TcpProxy:
    """A TCP forwarder on 127.0.0.1:<port> to ``target``, whose connections can be cut."""

    def __init__(self, target_host, target_port):
        self.target = (target_host, int(target_port))
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(128)
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.conns = set()
        self.paused = False
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.lsock.accept()
            except OSError:
                return
            if self.paused:
                self._kill(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                self._kill(client)
                continue
            with self.lock:
                self.conns.add(client)
                self.conns.add(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
                with self.lock:
                    self.conns.discard(s)

    @staticmethod
    def _kill(s):
        """Closes with a reset, like a dropped network path."""
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        try:
            s.close()
        except OSError:
            pass

    def cut(self):
        """Closes every open connection; new ones are still accepted."""
        with self.lock:
            conns = list(self.conns)
            self.conns.clear()
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._kill(s)

    def pause(self):
        """Cuts, and refuses connections (accepts and resets them) until ``resume()``."""
        self.paused = True
        self.cut()

    def resume(self):
        self.paused = False

    def close(self):
        self.closed = True
        try:
            self.lsock.close()
        except OSError:
            pass
        self.cut()
