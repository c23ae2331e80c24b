"""Browser test of the chat app (/): streaming, cancel, resume after a cut, a second tab, inert
model output, logout.

    python tests/browser/app_test.py --base http://127.0.0.1:PORT --model MODEL --shots DIR

MODEL replies "Echo: " + the user's last message, streamed in many chunks.
"""

import os
import sys
import time
import uuid
from urllib.parse import urlparse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

from common import TcpProxy, api, console, new_driver, parse_args, run_cases, tid, wait_for  # noqa: E402

def _args(p):
    p.add_argument("--model", default="echo", help="streaming model id")
    p.add_argument("--sms-phone", help="phone for the SMS login case (E.164)")
    p.add_argument("--code-file", help="where the test harness writes the SMS code it was sent")
    p.add_argument("--only", help="run only this case (e.g. token_refresh against a short JWT TTL)")


args = parse_args(_args)
PASSWORD = "correct horse 42"
USER = {"name": "ui_" + uuid.uuid4().hex[:10]}
D = {}  # drivers

# Every bubble: seq, role, status, id and text.
MSGS_JS = """
return [...document.querySelectorAll('[data-testid="msg"]')].map(e => ({
  seq: e.dataset.seq, role: e.dataset.role, status: e.dataset.status, id: e.dataset.id,
  text: e.querySelector('[data-testid="msg-text"]').textContent.trim(),
  html: e.querySelector('[data-testid="msg-text"]').innerHTML}));
"""

# Records (status, text length) of the last assistant bubble, and conn-status changes.
RECORDER_JS = """
window.__rec = []; window.__conn = [];
const last = () => [...document.querySelectorAll('[data-testid="msg"][data-role="assistant"]')].pop();
const note = () => { const e = last(); if (e) window.__rec.push([e.dataset.status,
  e.querySelector('[data-testid="msg-text"]').textContent.length]); };
if (window.__obs) window.__obs.disconnect();
window.__obs = new MutationObserver(note);
window.__obs.observe(document.getElementById('messages'),
  {subtree: true, childList: true, characterData: true, attributes: true});
const cs = document.querySelector('[data-testid="conn-status"]');
if (window.__cobs) window.__cobs.disconnect();
window.__cobs = new MutationObserver(() => window.__conn.push(cs.textContent));
window.__cobs.observe(cs, {subtree: true, childList: true, characterData: true});
"""


def words(n, tag):
    return " ".join(f"{tag}{i}" for i in range(n))


def q(d, name):
    return d.find_element(By.CSS_SELECTOR, tid(name))


def qa(d, name):
    return d.find_elements(By.CSS_SELECTOR, tid(name))


def msgs(d):
    return d.execute_script(MSGS_JS)


def balance(d):
    return int(q(d, "balance").text)


def wait_online(d, timeout=10):
    wait_for(d, lambda d: q(d, "conn-status").text == "online", timeout, "socket not online")


def wait_app(d):
    wait_for(d, lambda d: q(d, "app-screen").is_displayed(), 10, "app screen not shown")
    wait_for(d, lambda d: q(d, "balance").text.strip().isdigit(), 10, "no balance")
    wait_online(d)


def login(d, base):
    """Opens `base` and logs in as USER (registered in the UI by the first case, else here)."""
    if "token" not in USER:
        st, r = api(args.base, "POST", "/user/register", {"username": USER["name"], "password": PASSWORD})
        assert st in (201, 409), (st, r)
        USER["token"] = "registered"
    d.get(base + "/")
    wait_for(d, lambda d: q(d, "login-screen").is_displayed() or q(d, "app-screen").is_displayed(), 10)
    if q(d, "app-screen").is_displayed():
        wait_app(d)
        return
    q(d, "login-username").send_keys(USER["name"])
    q(d, "login-password").send_keys(PASSWORD)
    q(d, "login-submit").click()
    wait_app(d)


def new_conversation(d):
    Select(q(d, "model-select")).select_by_value("model:" + args.model)
    before = {e.get_attribute("data-id") for e in qa(d, "conv-item")}
    q(d, "conv-new").click()

    def created(d):
        for e in qa(d, "conv-item"):
            if e.get_attribute("data-id") not in before and "active" in e.get_attribute("class"):
                return e.get_attribute("data-id")
        return False

    cid = wait_for(d, created, 10, "new conversation not listed/active")
    wait_for(d, lambda d: not msgs(d), 5)
    return cid


def type_and_send(d, text):
    box = q(d, "composer")
    d.execute_script("arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'))", box, text)
    q(d, "send").click()


def wait_assistant(d, seq=None, statuses=("complete",), timeout=20):
    def done(d):
        for m in msgs(d):
            if m["role"] == "assistant" and m["status"] in statuses and (seq is None or m["seq"] == str(seq)):
                return m
        return False

    return wait_for(d, done, timeout, f"no assistant message {seq} in {statuses}")


def assert_contiguous(d, n):
    ms = msgs(d)
    seqs = [m["seq"] for m in ms]
    assert seqs == [str(i) for i in range(1, n + 1)], f"seqs {seqs}, want 1..{n}"
    ids = [m["id"] for m in ms]
    assert len(set(ids)) == len(ids), f"duplicate ids {ids}"
    assert all(m["status"] == "complete" for m in ms), [m["status"] for m in ms]
    return ms


# --- cases


def register_and_stream():
    d = D["main"] = new_driver(args)
    d.get(args.base + "/")
    wait_for(d, lambda d: q(d, "login-screen").is_displayed(), 10, "login screen not shown")
    q(d, "register-toggle").click()
    q(d, "login-username").send_keys(USER["name"])
    q(d, "login-password").send_keys(PASSWORD)
    q(d, "login-submit").click()
    wait_app(d)
    USER["token"] = "registered"
    assert d.execute_script("return localStorage.length") == 0 or not any(
        "refresh" in k for k in d.execute_script("return Object.keys(localStorage)")
    ), "refresh token in localStorage"
    b0 = balance(d)
    new_conversation(d)
    d.execute_script(RECORDER_JS)
    text = "hello streaming world " + words(22, "w")
    q(d, "composer").send_keys(text + Keys.ENTER)  # Enter sends
    final = wait_assistant(d)
    assert final["text"] == "Echo: " + text, final["text"]
    ms = assert_contiguous(d, 2)
    assert ms[0]["role"] == "user" and ms[0]["text"] == text, ms[0]
    rec = d.execute_script("return window.__rec")
    growing = [n for s, n in rec if s == "streaming"]
    assert len(set(growing)) >= 3, f"text did not grow while streaming: {rec[:40]}"
    assert growing == sorted(growing), f"text shrank while streaming: {growing}"
    assert min(growing) < len(final["text"]), "never seen a partial reply"
    wait_for(d, lambda d: balance(d) < b0, 5, f"balance did not decrease from {b0}")
    assert not q(d, "cancel").is_displayed()


def cancel():
    d = D.get("main") or D.setdefault("main", new_driver(args))
    login(d, args.base)
    new_conversation(d)
    text = "please cancel me " + words(70, "c")
    type_and_send(d, text)
    wait_for(d, lambda d: any(m["role"] == "assistant" and m["status"] == "streaming" and len(m["text"]) > 12
                              for m in msgs(d)), 10, "no streaming reply")
    wait_for(d, lambda d: q(d, "cancel").is_displayed(), 5)
    q(d, "cancel").click()
    m = wait_assistant(d, statuses=("cancelled",), timeout=10)
    full = "Echo: " + text
    assert m["text"] and full.startswith(m["text"]) and len(m["text"]) < len(full), m["text"]
    wait_for(d, lambda d: not q(d, "cancel").is_displayed() and q(d, "send").is_enabled(), 5)
    # Reload: still logged in (refresh token in sessionStorage); history shows the stored status.
    d.refresh()
    wait_app(d)
    m2 = wait_assistant(d, seq=2, statuses=("cancelled",), timeout=10)
    assert m2["text"] == m["text"], (m2["text"], m["text"])


def resume_without_gap():
    u = urlparse(args.base)
    proxy = TcpProxy(u.hostname, u.port)
    try:
        d = D.get("main") or D.setdefault("main", new_driver(args))
        base = f"http://127.0.0.1:{proxy.port}"
        login(d, base)
        cid = new_conversation(d)
        d.execute_script(RECORDER_JS)
        # A. cut mid-stream: reconnect, the turn ends complete, nothing twice.
        t1 = "first resume " + words(40, "a")
        type_and_send(d, t1)
        wait_assistant(d, statuses=("streaming",), timeout=10)
        proxy.cut()
        wait_for(d, lambda d: "reconnecting" in d.execute_script("return window.__conn"), 5, "never reconnecting")
        wait_online(d, 15)
        m = wait_assistant(d, seq=2, timeout=20)
        assert m["text"] == "Echo: " + t1, m["text"]
        assert_contiguous(d, 2)
        # B. down while the turn ends: the stored reply comes with the sync.
        status, r = api(args.base, "POST", "/user/login", {"username": USER["name"], "password": PASSWORD})
        assert status == 200, (status, r)
        tok = r["tokens"]["access_token"]
        t2 = "second resume " + words(30, "b")
        type_and_send(d, t2)
        wait_assistant(d, statuses=("streaming",), timeout=10)
        proxy.pause()
        wait_for(d, lambda d: q(d, "conn-status").text == "reconnecting", 5)
        wait_for(d, lambda d: api(args.base, "GET", f"/chat/conversations/{cid}", token=tok)[1]["last_seq"] >= 4,
                 20, "turn 2 not stored")
        proxy.resume()
        wait_online(d, 15)
        m = wait_assistant(d, seq=4, timeout=10)
        assert m["text"] == "Echo: " + t2, m["text"]
        assert_contiguous(d, 4)
        # C. a turn sent elsewhere (REST) while this tab is cut off shows up after the reconnect.
        proxy.pause()
        wait_for(d, lambda d: q(d, "conn-status").text == "reconnecting", 5)
        t3 = "sent over rest " + words(5, "r")
        status, r = api(args.base, "POST", f"/chat/conversations/{cid}/messages",
                        {"content": t3, "stream": False, "client_msg_id": str(uuid.uuid4())}, token=tok)
        assert status == 200 and r["assistant_message"]["status"] == "complete", (status, r)
        proxy.resume()
        wait_online(d, 15)
        m = wait_assistant(d, seq=6, timeout=10)
        assert m["text"] == "Echo: " + t3, m["text"]
        ms = assert_contiguous(d, 6)
        assert ms[4]["text"] == t3, ms[4]
    finally:
        proxy.close()


def second_tab():
    d = D.get("main") or D.setdefault("main", new_driver(args))
    login(d, args.base)
    cid = new_conversation(d)
    main = d.current_window_handle
    d.switch_to.new_window("window")
    other = d.current_window_handle
    try:
        # A new window has its own sessionStorage: log in there too.
        login(d, args.base)
        item = wait_for(d, lambda d: [e for e in qa(d, "conv-item") if e.get_attribute("data-id") == cid], 10)
        item[0].find_element(By.CSS_SELECTOR, tid("conv-open")).click()
        wait_for(d, lambda d: "active" in item[0].get_attribute("class"), 5)
        d.execute_script(RECORDER_JS)
        d.switch_to.window(main)
        text = "from tab one " + words(20, "t")
        type_and_send(d, text)
        m1 = wait_assistant(d, seq=2, timeout=20)
        d.switch_to.window(other)
        m2 = wait_assistant(d, seq=2, timeout=10)
        assert m2["text"] == m1["text"] == "Echo: " + text, (m1["text"], m2["text"])
        ms = assert_contiguous(d, 2)
        assert ms[0]["text"] == text
        rec = d.execute_script("return window.__rec")
        assert any(s == "streaming" for s, _ in rec), f"tab 2 never saw the stream: {rec[:10]}"
    finally:
        d.switch_to.window(other)
        d.close()
        d.switch_to.window(main)


XSS = '<img src=x onerror="window.__pwned=1"> [click](javascript:window.__pwned=2) **bold**'


def check_inert(d):
    ms = msgs(d)
    user = [m for m in ms if m["role"] == "user"][-1]
    assert user["text"] == XSS, user["text"]
    assert d.execute_script("return typeof window.__pwned") == "undefined", "script ran"
    bad = d.execute_script("""return [...document.querySelectorAll('[data-testid="msg"] *')]
        .filter(e => [...e.attributes].some(a => a.name.startsWith('on'))).map(e => e.outerHTML)""")
    assert not bad, f"event handler attributes: {bad}"
    links = d.execute_script("""return [...document.querySelectorAll('[data-testid="msg"] a')]
        .map(a => [a.getAttribute('href'), a.rel, a.target])""")
    for href, rel, target in links:
        assert not (href or "").strip().lower().startswith("javascript:"), href
        if href:
            assert "noopener" in rel and "noreferrer" in rel and target == "_blank", (href, rel, target)
    strong = d.execute_script("""return [...document.querySelectorAll(
        '[data-testid="msg"][data-role="assistant"] strong')].map(s => s.textContent)""")
    assert "bold" in strong, f"no <strong>bold</strong>: {strong}"
    user_html = d.execute_script("""return [...document.querySelectorAll(
        '[data-testid="msg"][data-role="user"] [data-testid="msg-text"] *')].length""")
    assert user_html == 0, "user text was parsed as HTML"


def xss_inert():
    d = D.get("main") or D.setdefault("main", new_driver(args))
    login(d, args.base)
    new_conversation(d)
    type_and_send(d, XSS)
    m = wait_assistant(d, seq=2)
    assert m["text"].startswith("Echo:"), m["text"]
    time.sleep(0.3)  # let a (wrongly) inserted <img> fail to load and fire onerror
    check_inert(d)
    d.refresh()  # the same from history
    wait_app(d)
    wait_assistant(d, seq=2)
    time.sleep(0.3)
    check_inert(d)


def phone_layout():
    d = D.get("main") or D.setdefault("main", new_driver(args))
    login(d, args.base)
    d.set_window_size(400, 800)
    try:
        wait_for(d, lambda d: q(d, "drawer-toggle").is_displayed(), 5, "no drawer toggle on a phone")
        wait_for(d, lambda d: not q(d, "conv-new").is_displayed(), 5, "drawer open on a phone")
        q(d, "drawer-toggle").click()
        wait_for(d, lambda d: q(d, "conv-new").is_displayed(), 5, "drawer did not open")
        q(d, "drawer-toggle").send_keys(Keys.ESCAPE)
        wait_for(d, lambda d: not q(d, "conv-new").is_displayed(), 5, "drawer did not close")
        assert q(d, "composer").is_displayed() and q(d, "balance").is_displayed()
    finally:
        d.set_window_size(1280, 900)


def logout():
    d = D.get("main") or D.setdefault("main", new_driver(args))
    login(d, args.base)
    rt = d.execute_script("return sessionStorage.getItem('questech.refresh_token')")
    assert rt, "no refresh token in sessionStorage"
    q(d, "logout").click()
    wait_for(d, lambda d: q(d, "login-screen").is_displayed(), 10, "login screen not shown")
    wait_for(d, lambda d: d.execute_script("return document.documentElement.dataset.ws") == "offline", 5)
    assert d.execute_script("return sessionStorage.getItem('questech.refresh_token')") is None
    status, _ = api(args.base, "POST", "/user/token/refresh", {"refresh_token": rt})
    assert status == 401, f"refresh after logout: {status}"
    time.sleep(1.2)  # no reconnection after logout
    assert d.execute_script("return document.documentElement.dataset.ws") == "offline"
    # Reload: stays logged out.
    d.refresh()
    wait_for(d, lambda d: q(d, "login-screen").is_displayed(), 10)


def sms_login():
    """SMS code login from the login screen: the code the `log` provider sent (the harness reads
    it from the server and writes it to --code-file) logs a new account in."""
    if not args.sms_phone or not args.code_file:
        raise AssertionError("--sms-phone and --code-file are required")
    d = D.get("main") or D.setdefault("main", new_driver(args))
    d.get(args.base + "/")
    wait_for(d, lambda d: q(d, "login-screen").is_displayed() or q(d, "app-screen").is_displayed(), 10)
    if q(d, "app-screen").is_displayed():
        q(d, "logout").click()
        wait_for(d, lambda d: q(d, "login-screen").is_displayed(), 10)
    q(d, "tab-sms").click()
    wait_for(d, lambda d: q(d, "login-phone").is_displayed(), 5, "SMS form not shown")
    # A malformed number is refused in words before anything is sent.
    q(d, "login-phone").send_keys("12345")
    q(d, "sms-send").click()
    wait_for(d, lambda d: "number" in d.find_element(By.ID, "login-error").text, 5, "no phone error")
    q(d, "login-phone").clear()
    q(d, "login-phone").send_keys(args.sms_phone)
    q(d, "sms-send").click()
    wait_for(d, lambda d: os.path.exists(args.code_file), 20, "no code was sent")
    with open(args.code_file) as f:
        code = f.read().strip()
    assert len(code) == 6 and code.isdigit(), code
    # A wrong code first: refused in words, still on the login screen.
    wrong = "%06d" % ((int(code) + 1) % 1000000)
    q(d, "login-code").send_keys(wrong)
    q(d, "sms-submit").click()
    wait_for(d, lambda d: "code" in d.find_element(By.ID, "login-error").text.lower(), 10, "no wrong-code error")
    q(d, "login-code").clear()
    q(d, "login-code").send_keys(code)
    q(d, "sms-submit").click()
    wait_app(d)
    assert d.execute_script("return sessionStorage.getItem('questech.refresh_token')"), "no session"


def token_refresh():
    """Against a server with a few seconds of access-token life: the app refreshes before each
    token expires (rotating the refresh token in sessionStorage) and keeps working, with no
    login screen and no failed request."""
    d = D.get("main") or D.setdefault("main", new_driver(args))
    login(d, args.base)
    seen = set()
    deadline = time.time() + 9
    while time.time() < deadline:
        seen.add(d.execute_script("return sessionStorage.getItem('questech.refresh_token')"))
        time.sleep(0.2)
    seen.discard(None)
    assert len(seen) >= 3, f"refresh token rotated {len(seen) - 1} times in 9 s"
    assert not q(d, "login-screen").is_displayed(), "logged out by an expired token"
    new_conversation(d)
    type_and_send(d, "still signed in")
    wait_assistant(d)
    bad = [line for line in console(d) if "401" in line]
    assert not bad, "\n".join(bad[:5])


def console_clean():
    """No CSP violation and no uncaught error in any page of the run."""
    d = D.get("main")
    assert d is not None, "no browser"
    bad = [line for line in console(d)
           if "Content Security Policy" in line or "Uncaught" in line or "TypeError" in line]
    assert not bad, "\n".join(bad[:10])


if __name__ == "__main__":
    if args.only:
        run_cases(args, [(args.only, globals()[args.only])])
    run_cases(args, [
        ("register_and_stream", register_and_stream),
        ("cancel", cancel),
        ("resume_without_gap", resume_without_gap),
        ("second_tab", second_tab),
        ("xss_inert", xss_inert),
        ("phone_layout", phone_layout),
        ("logout", logout),
        ("sms_login", sms_login),
        ("console_clean", console_clean),
    ])
