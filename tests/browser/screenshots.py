"""Takes the screenshots in docs/ of the chat app and the ops console (not a test).

Run against a server with the `echo` model and an admin, e.g.:
  BIND_ADDR=127.0.0.1:18300 DATABASE_URL=sqlite:///tmp/shots/q.db SERVICE_DEBUG=true target/debug/questech &
  echo 'admin-password-1' | DATABASE_URL=sqlite:///tmp/shots/q.db target/debug/questech admin create-user --username root --role admin
  python tests/browser/screenshots.py --base http://127.0.0.1:18300 --out docs --admin-user root --admin-pass admin-password-1
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from selenium.webdriver.support.ui import Select  # noqa: E402

from common import new_driver, parse_args, quit_all, tid, wait_for  # noqa: E402


def extra(p):
    p.add_argument("--out", default="docs")
    p.add_argument("--admin-user", required=True)
    p.add_argument("--admin-pass", required=True)
    p.add_argument("--model", default="echo")


args = parse_args(extra)


def q(d, name):
    return d.find_element("css selector", tid(name))


def app_shot():
    d = new_driver(args, 1200, 760)
    d.get(args.base + "/")
    wait_for(d, lambda d: q(d, "login-screen").is_displayed(), 10)
    q(d, "login-username").send_keys(args.admin_user)
    q(d, "login-password").send_keys(args.admin_pass)
    q(d, "login-submit").click()
    wait_for(d, lambda d: q(d, "app-screen").is_displayed(), 10)
    wait_for(d, lambda d: q(d, "conn-status").text.strip() == "online", 10)
    Select(q(d, "model-select")).select_by_value("model:" + args.model)
    q(d, "conv-new").click()
    time.sleep(0.5)
    text = "Show me **Markdown**: a list\n\n- one\n- two\n\nand `code` in a block:\n\n```\nfn main() {}\n```"
    box = q(d, "composer")
    d.execute_script(
        "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'))", box, text
    )
    q(d, "send").click()
    wait_for(
        d,
        lambda d: any(
            m.get_attribute("data-role") == "assistant" and m.get_attribute("data-status") == "complete"
            for m in d.find_elements("css selector", tid("msg"))
        ),
        20,
    )
    d.save_screenshot(os.path.join(args.out, "screenshot-app.png"))


def ops_shot():
    d = new_driver(args, 1200, 900)
    d.get(args.base + "/ops")
    wait_for(d, lambda d: q(d, "ops-username").is_displayed(), 10)
    q(d, "ops-username").send_keys(args.admin_user)
    q(d, "ops-password").send_keys(args.admin_pass)
    q(d, "ops-login").click()
    wait_for(d, lambda d: q(d, "actors-users").text.strip().isdigit(), 10)
    time.sleep(6)  # a few points on the charts
    d.save_screenshot(os.path.join(args.out, "screenshot-ops.png"))


try:
    app_shot()
    ops_shot()
finally:
    quit_all()
print("saved", os.path.join(args.out, "screenshot-app.png"), os.path.join(args.out, "screenshot-ops.png"))
