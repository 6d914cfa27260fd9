"""The web page in a real headless Chromium against the API under uvicorn: a refused upload is
always an error with the server's reason, never a verdict; the file picker offers only the
types the server takes; the page works under its CSP, and asks for the access token when the
server needs one. (The verdict, faces and timeline on the real champion: tests/test_api.py.)"""
import os
import shutil

import pytest

from tests.conftest import small_params
from tests.test_robustness import files, live_api, stub_scorer  # noqa: F401 (files: a fixture)


def chromium_driver():
    """Selenium on Debian's chromium; a skip without it (a failure under CI=true)."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        message = "chromium and chromium-driver are not installed (make test installs them with apt)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,1400"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # to read CSP violations
    return webdriver.Chrome(service=Service(driver), options=options)


def test_page_shows_every_refusal_as_an_error_and_asks_for_the_token(files, monkeypatch):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    params = small_params()
    scorer = stub_scorer(params)
    real_detect, crash = scorer.detect, []
    scorer.detect = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("bug")) if crash else real_detect(*a, **k)
    driver = chromium_driver()
    wait = WebDriverWait(driver, 180)

    def upload(path, crop=False):
        driver.execute_script("document.getElementById('file').value = '';"
                              f"document.getElementById('crop').checked = {str(crop).lower()};")
        driver.find_element(By.ID, "file").send_keys(str(path))

    def error_shown(text):
        wait.until(lambda d: d.find_element(By.ID, "error").is_displayed() and text in d.find_element(By.ID, "error").text)
        assert not driver.find_element(By.ID, "result").is_displayed()
        assert "No sign of forgery found" not in driver.page_source and "Likely forged" not in driver.page_source

    try:
        with live_api(params, scorer) as (url, _):
            driver.get(url + "/")
            wait.until(lambda d: "version 1" in d.find_element(By.ID, "model").text)
            assert driver.find_element(By.ID, "file").get_attribute("accept").split(",") == params["api"]["allowed_types"]
            upload(files["heic"])  # a type the server refuses (the picker no longer offers it; a drop can)
            error_shown("Could not check photo.heic: type '.heic' is not accepted")
            assert "(HTTP 415)" in driver.find_element(By.ID, "error").text
            upload(files["tiny"])
            error_shown("too small to search")
            upload(files["mkv_as_jpg"])
            error_shown("not the image its name (.jpg) says (HTTP 415)")
            crash.append(True)
            upload(files["face"], crop=True)
            error_shown("internal error (RuntimeError)")
            crash.clear()
            upload(files["face"], crop=True)  # and a real answer is still a verdict
            wait.until(lambda d: d.find_element(By.ID, "verdict").get_attribute("data-verdict") in ("fake", "real")
                       and d.find_element(By.ID, "answered-by").text.endswith(" s."))
            assert not driver.find_element(By.ID, "error").is_displayed()

        monkeypatch.setenv("DFCL_API_TOKEN", "page-token")
        with live_api(params) as (url, _):
            driver.get(url + "/")
            wait.until(lambda d: d.find_element(By.ID, "token-box").is_displayed())
            assert "needs an access token" in driver.find_element(By.ID, "model").text
            driver.find_element(By.ID, "token").send_keys("page-token")
            driver.find_element(By.CSS_SELECTOR, "#token-box button").click()
            wait.until(lambda d: "version 1" in d.find_element(By.ID, "model").text)
            upload(files["face"], crop=True)
            wait.until(lambda d: d.find_element(By.ID, "verdict").get_attribute("data-verdict") in ("fake", "real"))
        violations = [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]
        assert not violations, violations
    finally:
        driver.quit()
