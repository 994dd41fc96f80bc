#!/usr/bin/env python3
"""Signs in to the login program with a real browser, through the Chrome DevTools Protocol.

Usage: login.py CHROMIUM LOGIN_URL PROFILE_DIR

Headless Chromium is driven over --remote-debugging-pipe (JSON messages ending in NUL on
file descriptors 3 and 4), so nothing beyond the standard library is needed. It loads the
sign-in form, fills it and submits it as a user would, then signs out; then a page of another
site (a data: URL) posts a forged sign-in to the program, which must be refused. Each step
prints one line; any failure exits non-zero with what the page said.
"""

import json
import os
import subprocess
import sys
import time

TIMEOUT = 30


class Browser:
    def __init__(self, chromium, profile):
        to_browser_r, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()

        def plumb():
            # Through fresh descriptors: a pipe end that already is 3 or 4 would otherwise
            # keep its close-on-exec flag (dup2 onto itself changes nothing).
            read_end, write_end = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.process = subprocess.Popen(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-dev-shm-usage",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            preexec_fn=plumb,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.buffer = b""
        self.next_id = 0
        self.events = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call(
            "Target.attachToTarget", {"targetId": target, "flatten": True}
        )["sessionId"]
        self.call("Page.enable", session=True)

    def send(self, method, params, session):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        return self.next_id

    def receive(self, deadline):
        while b"\0" not in self.buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("the browser did not answer")
            chunk = os.read(self.from_browser, 65536)
            if not chunk:
                raise EOFError("the browser went away")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method, params=None, session=False):
        wanted = self.send(method, params, session)
        deadline = time.monotonic() + TIMEOUT
        while True:
            message = self.receive(deadline)
            if message.get("id") == wanted:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for_load(self):
        deadline = time.monotonic() + TIMEOUT
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == "Page.loadEventFired":
                    del self.events[: i + 1]
                    return
            self.events.clear()
            self.events.append(self.receive(deadline))

    def evaluate(self, expression):
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True},
            session=True,
        )
        return result["result"].get("value")

    def navigate(self, url):
        self.events.clear()
        self.call("Page.navigate", {"url": url}, session=True)
        self.wait_for_load()

    def submit(self, script):
        """Runs `script` (which submits a form) and waits for the page it leads to."""
        self.events.clear()
        self.evaluate(script)
        self.wait_for_load()

    def text(self):
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def close(self):
        try:
            self.call("Browser.close")
        except Exception:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def expect(condition, step, page):
    if not condition:
        print(f"FAILED: {step}\n--- the page says:\n{page}", flush=True)
        sys.exit(1)
    print(f"ok: {step}", flush=True)


def main():
    chromium, url, profile = sys.argv[1:4]
    browser = Browser(chromium, profile)
    try:
        browser.navigate(url)
        page = browser.text()
        expect("Sign in" in page, "the sign-in form shows", page)
        browser.submit(
            "document.querySelector('input[name=user]').value = 'eggs';"
            "document.querySelector('input[name=password]').value = 'spam';"
            "document.querySelector('form').submit(); true"
        )
        page = browser.text()
        expect("Signed in as eggs" in page, "a real browser signs in", page)
        browser.submit("document.querySelector('form').submit(); true")
        page = browser.text()
        expect("You have signed out." in page, "and signs out", page)

        # Another site's page posts a sign-in to the program, with a token of the right
        # shape: refused (the browser sends neither the SameSite=Strict form cookie nor a
        # same-origin Sec-Fetch-Site).
        browser.navigate(url)
        token = browser.evaluate("document.querySelector('input[name=token]').value")
        forged = (
            "data:text/html,<form method=post action='" + url + "'>"
            "<input name=token value='" + token + "'>"
            "<input name=action value=login><input name=user value=eggs>"
            "<input name=password value=spam></form>"
        )
        browser.navigate(forged)
        browser.submit("document.forms[0].submit(); true")
        page = browser.text()
        expect(
            "Signed in" not in page and "not ours" in page,
            "a post from another site is refused",
            page,
        )
        browser.navigate(url)
        page = browser.text()
        expect("Signed in" not in page, "and signed nobody in", page)
    finally:
        browser.close()


if __name__ == "__main__":
    main()
