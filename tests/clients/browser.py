#!/usr/bin/env python3
"""Drives Debian's headless Chromium (through chromedriver, with Selenium) on the
page of a running daemon. Test-only.

usage: browser.py URL SCREENSHOT_PNG INJECTED_TEXT
Exit 0 when every check holds; prints what it saw. Exit 3 when Chromium or
chromedriver cannot start (the caller skips).
"""
import shutil
import sys
import tempfile
import time

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

url, shot, injected = sys.argv[1], sys.argv[2], sys.argv[3]
chromium = shutil.which("chromium") or shutil.which("chromium-browser")
driver_path = shutil.which("chromedriver")
if not chromium or not driver_path:
    print("chromium or chromedriver not found")
    sys.exit(3)
opts = webdriver.ChromeOptions()
opts.binary_location = chromium
profile = tempfile.mkdtemp(prefix="lorastream-chromium-")
for a in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--disable-dev-shm-usage", "--window-size=1400,1800", "--user-data-dir=" + profile]:
    opts.add_argument(a)
try:
    d = webdriver.Chrome(service=Service(driver_path), options=opts)
except WebDriverException as e:
    print("cannot start chromium:", e.msg)
    sys.exit(3)

def check(cond, what):
    if not cond:
        print("FAILED:", what)
        d.save_screenshot(shot)
        d.quit()
        sys.exit(1)
    print("ok:", what)

try:
    wait = WebDriverWait(d, 60)
    d.get(url + "/")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#versions tbody tr"))
    versions = d.find_element(By.ID, "versions").text
    check("v1" in versions and ("promoted" in versions or "rejected" in versions),
          "versions table shows v1 with its decision: " + versions.replace("\n", " | "))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#matrix td.cell")) >= 2)
    cells = [c.text for c in d.find_elements(By.CSS_SELECTOR, "#matrix td.cell")]
    check(any(c.replace(".", "", 1).isdigit() for c in cells), "matrix shows perplexities: %s" % cells)
    colored = d.execute_script(
        "return [...document.querySelectorAll('#matrix td.cell')].filter(c => c.style.backgroundColor).length")
    check(colored >= 2, "matrix cells are a heat map (%d coloured)" % colored)
    check("demo" in d.find_element(By.ID, "sources").text, "sources table lists the source")
    check(d.find_elements(By.CSS_SELECTOR, "#streams tbody tr"), "streams table has rows")
    disk = d.find_element(By.ID, "disk").text
    check("state dir" in disk and "free" in disk, "disk use and free space shown: " + disk)
    # The injected question is shown as text and never ran.
    wait.until(lambda d: injected in d.find_element(By.ID, "recent").text)
    check(injected in d.find_element(By.ID, "recent").text, "injected question shown as text")
    check(d.execute_script("return window.__pwned === undefined"), "injected script did not run")
    n_scripts = d.execute_script("return document.scripts.length")
    check(n_scripts == 1, "only the page's own script element (%d)" % n_scripts)
    # It refreshes itself: the 'updated' stamp changes without a reload.
    d.execute_script("window.__marker = 1")
    first = d.find_element(By.ID, "updated").text
    wait.until(lambda d: d.find_element(By.ID, "updated").text != first)
    check(d.execute_script("return window.__marker === 1"), "refreshed without a full reload")
    # Chat: a streamed answer arrives.
    box = d.find_element(By.ID, "chat-input")
    box.send_keys("hello there")
    d.find_element(By.ID, "chat-send").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chat-log .msg.done"))
    answer = d.find_elements(By.CSS_SELECTOR, "#chat-log .msg .answer")[-1].text
    check(len(answer) > 0, "streamed chat answer: %r" % answer)
    # This browser is its own user, and the second message continues the
    # conversation the server named (a 404 would show as an error bubble).
    user = d.execute_script("return localStorage.getItem('lorastream-user')")
    check(bool(user) and user.startswith("web-") and len(user) == 36, "per-browser user: %r" % user)
    box.send_keys("and again")
    d.find_element(By.ID, "chat-send").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#chat-log .msg.done")) >= 2)
    bad = d.find_elements(By.CSS_SELECTOR, "#chat-log .bad")
    check(not bad, "second message answered: %r" % [b.text for b in bad])
    d.save_screenshot(shot)
    print("screenshot:", shot)
finally:
    d.quit()
