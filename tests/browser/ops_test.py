"""Browser test of the operations console (/ops): login gate, live panel under load, admin actions.

Run: python tests/browser/ops_test.py --base http://127.0.0.1:PORT --shots DIR \
        --admin-user U --admin-pass P --model MODEL [--chromedriver ...] [--chromium ...]

Cases: non_admin_refused, live_under_load, grant_and_disable, model_toggle, reload_and_logout. The last one turns
MODEL off for a moment (and always back on): do not share the server with tests that need it then.
"""

import os
import secrets
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

from common import api, new_driver, parse_args, run_cases, tid  # noqa: E402

PASSWORD = "ops-test-pass-1"


def extra(p):
    p.add_argument("--admin-user", required=True)
    p.add_argument("--admin-pass", required=True)
    p.add_argument("--model", default="echo", help="an enabled model for the load and the toggle")


ARGS = parse_args(extra)
STATE = {}


def register(prefix):
    name = f"{prefix}_{secrets.token_hex(4)}"[:20]
    st, body = api(ARGS.base, "POST", "/user/register", {"username": name, "password": PASSWORD})
    assert st == 201, f"register {name}: {st} {body}"
    return body["user"], body["tokens"]["access_token"]


def wait_for(driver, fn, timeout=10, message=""):
    """Like common.wait_for, but a list re-rendered under our feet only means "try again"."""
    return WebDriverWait(driver, timeout, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException]).until(fn, message)


def text(d, name):
    return d.find_element(By.CSS_SELECTOR, tid(name)).text.strip()


def login_ops(d, user, password):
    d.get(ARGS.base + "/ops")
    box = wait_for(d, lambda d: (lambda e: e if e.is_displayed() else None)(d.find_element(By.CSS_SELECTOR, tid("ops-username"))), 10, "login form")
    box.clear()
    box.send_keys(user)
    pw = d.find_element(By.CSS_SELECTOR, tid("ops-password"))
    pw.clear()
    pw.send_keys(password)
    d.find_element(By.CSS_SELECTOR, tid("ops-login")).click()


def admin_driver():
    """One logged-in admin browser shared by the admin cases (logged in again if it was lost)."""
    d = STATE.get("admin")
    if d is None:
        d = STATE["admin"] = new_driver(ARGS)
    logout = d.find_elements(By.CSS_SELECTOR, tid("ops-logout"))
    if not (logout and logout[0].is_displayed()):
        login_ops(d, ARGS.admin_user, ARGS.admin_pass)
        wait_for(d, lambda d: text(d, "actors-users").isdigit(), 10, "live panel after admin login")
    return d


def chart(d, name):
    e = d.find_element(By.CSS_SELECTOR, tid(name))
    last = e.get_attribute("data-last")
    return int(e.get_attribute("data-points") or 0), (float(last) if last else None)


def dialog_open(d):
    return d.execute_script("return document.querySelector('[data-testid=confirm-dialog]').open")


def confirm(d):
    wait_for(d, lambda d: dialog_open(d), 5, "confirmation dialog")
    d.find_element(By.CSS_SELECTOR, tid("confirm-ok")).click()
    try:
        wait_for(d, lambda d: not dialog_open(d), 10, "dialog to close after confirming")
    except Exception:
        err = d.find_element(By.CSS_SELECTOR, tid("confirm-error")).text
        raise AssertionError(f"the change failed in the dialog: {err!r}")


def row(d, kind, ident):
    rows = d.find_elements(By.CSS_SELECTOR, f'{tid(kind)}[data-id="{ident}"]')
    return rows[0] if rows else None


def click_in_row(d, kind, ident, button, check=None):
    """Clicks `button` of the row (found afresh, retried while the list re-renders)."""

    def go(d):
        r = row(d, kind, ident)
        if r is None:
            return False
        b = r.find_element(By.CSS_SELECTOR, tid(button))
        if check:
            check(b)
        b.click()
        return True

    wait_for(d, go, 10, f"{button} in the {kind} {ident}")


# ---- cases ----


def non_admin_refused():
    user, _ = register("opsnon")
    d = new_driver(ARGS, width=420, height=800)  # a phone-sized window too
    login_ops(d, user["username"], PASSWORD)
    err = wait_for(
        d,
        lambda d: (lambda e: e if e.is_displayed() and "admins only" in e.text else None)(d.find_element(By.CSS_SELECTOR, tid("ops-error"))),
        10,
        "the 'admins only' refusal",
    )
    assert not d.find_element(By.ID, "console").is_displayed(), "console shown to a non-admin"
    assert not d.find_element(By.CSS_SELECTOR, tid("ops-logout")).is_displayed()
    assert "admins only" in err.text
    # Nothing of the session is kept: a reload shows the login form again.
    assert d.execute_script("return sessionStorage.length") == 0
    # (quit with the others at the end; a failure screenshots it)


def load(users, convs, turns, errors):
    def one_conv(token):
        try:
            st, c = api(ARGS.base, "POST", "/chat/conversations", {"title": "ops load", "model": ARGS.model}, token)
            assert st == 201, f"create conversation: {st} {c}"
            for i in range(turns):
                st, b = api(ARGS.base, "POST", f"/chat/conversations/{c['id']}/messages", {"content": f"load turn {i} " + "word " * 20, "model": ARGS.model}, token)
                assert st == 200, f"turn: {st} {b}"
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = []
    for _ in range(users):
        _, token = register("opsload")
        for _ in range(convs):
            t = threading.Thread(target=one_conv, args=(token,), daemon=True)
            t.start()
            threads.append(t)
    return threads


def live_under_load():
    d = admin_driver()
    wait_for(d, lambda d: chart(d, "chart-turns")[0] >= 1, 10, "a first point on the turns chart")
    u0, c0 = int(text(d, "actors-users")), int(text(d, "actors-conversations"))
    p0, _ = chart(d, "chart-turns")
    errors = []
    threads = load(users=3, convs=2, turns=3, errors=errors)
    seen = {"users": u0, "convs": c0, "turns_last": 0.0, "inflight": 0, "credits_last": 0.0}
    deadline = time.monotonic() + 15
    after = None
    while time.monotonic() < deadline:
        seen["users"] = max(seen["users"], int(text(d, "actors-users") or 0))
        seen["convs"] = max(seen["convs"], int(text(d, "actors-conversations") or 0))
        seen["inflight"] = max(seen["inflight"], int(text(d, "turns-inflight") or 0))
        _, last = chart(d, "chart-turns")
        seen["turns_last"] = max(seen["turns_last"], last or 0)
        _, cr = chart(d, "chart-credits")
        seen["credits_last"] = max(seen["credits_last"], cr or 0)
        if after is None and not any(t.is_alive() for t in threads):
            after = time.monotonic() + 2.5  # two more polls see the last turns end
        if after is not None and time.monotonic() > after:
            break
        time.sleep(0.1)
    assert not errors, f"load failed: {errors[:3]}"
    assert after is not None, "load did not finish within 15 s"
    p1, _ = chart(d, "chart-turns")
    print(f"  live: users {u0}->{seen['users']}, conversations {c0}->{seen['convs']}, "
          f"turns chart points {p0}->{p1}, max turns/s {seen['turns_last']:.2f}, "
          f"max in flight {seen['inflight']}, max credits/s {seen['credits_last']:.2f}", flush=True)
    assert seen["users"] >= u0 + 3, f"user-session actors {u0} -> {seen['users']}, want +3"
    assert seen["convs"] >= c0 + 6, f"conversation actors {c0} -> {seen['convs']}, want +6"
    assert seen["turns_last"] > 0, "the turns chart never showed a rate above 0"
    assert p1 > p0, f"turns chart points did not grow ({p0} -> {p1})"
    assert seen["credits_last"] > 0, "the credits chart never showed credits spent"
    for name in ("chart-v1", "chart-latency", "chart-errors"):
        assert chart(d, name)[0] >= 1, f"{name} has no points"


def grant_and_disable():
    user, token = register("opsgrant")
    st, me = api(ARGS.base, "GET", "/user/me", token=token)
    assert st == 200, (st, me)
    before = me["credits"]
    d = admin_driver()
    d.find_element(By.CSS_SELECTOR, 'a[href="#users"]').click()
    search = d.find_element(By.CSS_SELECTOR, tid("user-search"))
    search.clear()
    search.send_keys(user["username"], Keys.ENTER)
    click_in_row(d, "user-row", user["id"], "grant-credits")
    wait_for(d, lambda d: dialog_open(d), 5, "grant dialog")
    amount = d.find_element(By.CSS_SELECTOR, tid("grant-amount"))
    amount.send_keys(Keys.CONTROL, "a")
    amount.send_keys("50")
    confirm(d)

    def credited(_):
        s, m = api(ARGS.base, "GET", "/user/me", token=token)
        return s == 200 and m["credits"] == before + 50

    wait_for(d, credited, 10, f"credits {before} + 50 via GET /user/me")
    wait_for(d, lambda d: (lambda r: r is not None and str(before + 50) in r.text)(row(d, "user-row", user["id"])), 10, "the row showing the new balance")


    def enabled_now(b):
        assert b.get_attribute("data-disabled") == "false", "the user is shown disabled already"

    click_in_row(d, "user-row", user["id"], "disable-user", enabled_now)
    confirm(d)
    st, body = api(ARGS.base, "POST", "/user/login", {"username": user["username"], "password": PASSWORD})
    assert st == 403, f"login of a disabled user answered {st} {body}"
    st, _ = api(ARGS.base, "GET", "/user/me", token=token)
    assert st == 401, f"the disabled user's token still answers {st}"
    wait_for(d, lambda d: (lambda r: r is not None and r.find_element(By.CSS_SELECTOR, tid("disable-user")).get_attribute("data-disabled") == "true")(row(d, "user-row", user["id"])), 10, "the row showing the user disabled")


def model_enabled(model):
    st, body = api(ARGS.base, "GET", "/config/models")
    assert st == 200, (st, body)
    for m in body["data"]:
        if m["id"] == model:
            return m["enabled"]
    raise AssertionError(f"{model} not in /config/models")


def model_toggle():
    d = admin_driver()
    model = ARGS.model
    assert model_enabled(model), f"{model} should be enabled before the test"
    try:
        for want in (False, True):
            d.find_element(By.CSS_SELECTOR, 'a[href="#models"]').click()

            def unlike(b, want=want):
                assert b.is_selected() != want, f"checkbox already {want}"

            click_in_row(d, "model-row", model, "model-enabled", unlike)
            confirm(d)
            wait_for(d, lambda _: model_enabled(model) == want, 10, f"/config/models enabled == {want}")
            wait_for(d, lambda d: (lambda r: r is not None and r.find_element(By.CSS_SELECTOR, tid("model-enabled")).is_selected() == want)(row(d, "model-row", model)), 10, "the checkbox to follow")
    finally:
        if not model_enabled(model):  # never leave the server without its model
            st, b = api(ARGS.base, "POST", "/user/login", {"username": ARGS.admin_user, "password": ARGS.admin_pass})
            if st == 200:
                api(ARGS.base, "PATCH", f"/admin/models/{model}", {"enabled": True}, b["tokens"]["access_token"])


REFRESH_KEY = "questech.ops.refresh_token"


def reload_and_logout():
    d = admin_driver()
    rt0 = d.execute_script(f"return sessionStorage.getItem('{REFRESH_KEY}')")
    assert rt0, "no refresh token kept in sessionStorage"
    d.refresh()  # the access token was in memory only: the page refreshes its session
    wait_for(d, lambda d: d.find_element(By.CSS_SELECTOR, tid("ops-logout")).is_displayed() and text(d, "actors-users").isdigit(), 10, "the console after a reload")
    rt1 = d.execute_script(f"return sessionStorage.getItem('{REFRESH_KEY}')")
    assert rt1 and rt1 != rt0, "the refresh token did not rotate"
    d.find_element(By.CSS_SELECTOR, tid("ops-logout")).click()
    wait_for(d, lambda d: d.find_element(By.CSS_SELECTOR, tid("ops-username")).is_displayed(), 10, "the login form after logging out")
    assert d.execute_script(f"return sessionStorage.getItem('{REFRESH_KEY}')") is None
    st, _ = api(ARGS.base, "POST", "/user/token/refresh", {"refresh_token": rt1})
    assert st == 401, f"the logged-out session still refreshes ({st})"


if __name__ == "__main__":
    run_cases(
        ARGS,
        [
            ("non_admin_refused", non_admin_refused),
            ("live_under_load", live_under_load),
            ("grant_and_disable", grant_and_disable),
            ("model_toggle", model_toggle),
            ("reload_and_logout", reload_and_logout),
        ],
    )
