"""Headless Chromium driven by Selenium, for the console test (tests/tests/console.rs).

Started with one JSON argument: {"chromium": path, "chromedriver": path}. Reads commands as JSON
lines on stdin and answers each with one JSON line on stdout:

  {"cmd": "goto", "url": U}                      -> {"event": "done"}
  {"cmd": "type", "css": C, "text": T}           -> {"event": "done"}      (clears the field first)
  {"cmd": "select", "css": C, "value": V}        -> {"event": "done"}
  {"cmd": "click", "css": C}                     -> {"event": "done"}      (accepts a confirm())
  {"cmd": "wait_text", "css": C, "text": T, "timeout": S}
                                                 -> {"event": "done", "text": ...} once the first
                                                    element matching C shows T (a substring)
  {"cmd": "texts", "css": C}                     -> {"event": "texts", "texts": [...]}
  {"cmd": "url"}                                 -> {"event": "url", "url": ...}
  {"cmd": "cookies"}                             -> {"event": "cookies", "cookies": [...]}

A failed command answers {"event": "error", "message": ...}; the process keeps going. It prints
{"event": "ready"} once the browser runs, and quits the browser when stdin closes.
"""

import json
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import (
    NoAlertPresentException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def first_text(driver, css):
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else None


def on_element(driver, css, action):
    """Finds the element and acts on it, again if the page re-rendered it in between (the
    console redraws its lists every few seconds)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return action(driver.find_element(By.CSS_SELECTOR, css))
        except StaleElementReferenceException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def clear_and_type(field, text):
    field.clear()
    field.send_keys(text)


def run(driver, cmd):
    kind = cmd["cmd"]
    if kind == "goto":
        driver.get(cmd["url"])
        return {"event": "done"}
    if kind == "type":
        on_element(driver, cmd["css"], lambda e: clear_and_type(e, cmd["text"]))
        return {"event": "done"}
    if kind == "select":
        on_element(driver, cmd["css"], lambda e: Select(e).select_by_value(cmd["value"]))
        return {"event": "done"}
    if kind == "click":
        on_element(driver, cmd["css"], lambda e: e.click())
        try:
            driver.switch_to.alert.accept()
        except NoAlertPresentException:
            pass
        return {"event": "done"}
    if kind == "wait_text":
        deadline = time.monotonic() + float(cmd.get("timeout", 15))
        text = None
        while time.monotonic() < deadline:
            try:
                text = first_text(driver, cmd["css"])
            except WebDriverException:
                text = None
            if text is not None and cmd["text"] in text:
                return {"event": "done", "text": text}
            time.sleep(0.1)
        return {
            "event": "error",
            "message": f"{cmd['css']!r} shows {text!r}, not {cmd['text']!r}, "
            f"status line {first_text(driver, '#status')!r}",
        }
    if kind == "texts":
        texts = on_element(
            driver,
            "body",
            lambda _: [e.text for e in driver.find_elements(By.CSS_SELECTOR, cmd["css"])],
        )
        return {"event": "texts", "texts": texts}
    if kind == "url":
        return {"event": "url", "url": driver.current_url}
    if kind == "cookies":
        return {"event": "cookies", "cookies": driver.get_cookies()}
    return {"event": "error", "message": f"unknown command {kind!r}"}


def main():
    opts = json.loads(sys.argv[1])
    options = webdriver.ChromeOptions()
    options.binary_location = opts["chromium"]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-first-run", "--disable-extensions", "--window-size=1280,1600"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=opts["chromedriver"]),
                              options=options)
    try:
        emit({"event": "ready"})
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                emit(run(driver, json.loads(line)))
            except Exception as e:  # noqa: BLE001 - every failure is reported to the test
                emit({"event": "error", "message": f"{type(e).__name__}: {e}"})
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
