"""The web page in a real headless Chromium against the API under uvicorn: a refused upload is
always an error with the server's reason, never a verdict; the file picker offers only the
types the server takes; the page works under its CSP, and asks for the access token when the
server needs one; a verdict says how sure it is (calibrated P(fake), "uncertain" with its reason,
the novelty note, the method a fake resembles), the model card shows what the model learned and
what it scored on methods it had not learned yet, and a video's timeline follows the answer with
no gap, with the frames that decided it. (The verdict, faces and timeline on the real champion:
tests/test_api.py.)"""
import os
import shutil

import numpy as np
import pytest

from tests.conftest import small_params
from tests.test_robustness import files, live_api, stub_scorer, write_video  # noqa: F401 (files: a fixture)


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
            assert driver.find_element(By.ID, "file").get_attribute("accept").split(",") == params.api.allowed_types
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
            wait.until(lambda d: d.find_element(By.ID, "verdict").get_attribute("data-verdict") in ("fake", "real", "uncertain")
                       and d.find_element(By.ID, "answered-by").text.endswith(" s."))
            assert not driver.find_element(By.ID, "error").is_displayed()
            assert "This model is not calibrated" in driver.find_element(By.ID, "band").text  # no trust data: said
            assert not driver.find_element(By.ID, "novel").is_displayed()

        monkeypatch.setenv("DFCL_API_TOKEN", "page-token")
        with live_api(params) as (url, _):
            driver.get(url + "/")
            wait.until(lambda d: d.find_element(By.ID, "token-box").is_displayed())
            assert "needs an access token" in driver.find_element(By.ID, "model").text
            driver.find_element(By.ID, "token").send_keys("page-token")
            driver.find_element(By.CSS_SELECTOR, "#token-box button").click()
            wait.until(lambda d: "version 1" in d.find_element(By.ID, "model").text)
            upload(files["face"], crop=True)
            wait.until(lambda d: d.find_element(By.ID, "verdict").get_attribute("data-verdict") in ("fake", "real", "uncertain"))
        violations = [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]
        assert not violations, violations
    finally:
        driver.quit()


NOVEL = "This face is unlike the forgeries and real faces the model has learned: treat the verdict with care."
LEARNED = [{"method": "demo/A", "learned_at": "2025-03-01T10:20:30+00:00", "test_auc": 0.9712, "auc_before_learning": None},
           {"method": "demo/B", "learned_at": None, "test_auc": 0.8834, "auc_before_learning": 0.6123}]


class OneFacePerFrame:
    """A face finder that finds the same face in every frame (the test video's frames are flat grey)."""

    def detect(self, frames):
        return [(np.array([8.0, 8.0, 56.0, 56.0]), None, 0.999) for _ in frames]

    def detect_all(self, frames):
        return [[f] for f in self.detect(frames)]


def test_page_says_how_sure_a_verdict_is_and_shows_the_model_card(files, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from dfcl.measure.trust import Calibration, Trust, fit_feature_space

    params = small_params()
    scorer = stub_scorer(params)
    scorer._finder = OneFacePerFrame()
    width = scorer.detector.model.head.in_features
    rng = np.random.default_rng(0)
    space = fit_feature_space(rng.normal(size=(60, width)), np.repeat([0, 1, 2], 20), ["real", "demo/A", "demo/B"], 4)
    # Every face uncertain (no cut answers fake or real) and novel (farther than 0 from every class).
    report = {"test_coverage": 0.8712, "test_answered_accuracy": 0.9634, "test_ece": 0.031, "test_ece_raw": 0.084}
    scorer.detector.trust = Trust(Calibration(1.2, 0.1), band=(0.0, 1.0 + 1e-6), threshold=0.5, precision=0.95,
                                  novelty_threshold=0.0, space=space, report=report)
    scorer.detector.info |= {"methods": ["demo/A", "demo/B"], "learned": LEARNED, "auc_forward_transfer": 0.6123}
    video = write_video(tmp_path / "clip.mp4", 30, size=(160, 120))
    driver = chromium_driver()
    wait = WebDriverWait(driver, 180)
    text = lambda id_: driver.find_element(By.ID, id_).text  # noqa: E731
    shown = lambda id_: driver.find_element(By.ID, id_).is_displayed()  # noqa: E731

    def upload(path, crop=False):
        driver.execute_script("document.getElementById('file').value = '';"
                              "document.getElementById('answered-by').textContent = '';"
                              f"document.getElementById('crop').checked = {str(crop).lower()};")
        driver.find_element(By.ID, "file").send_keys(str(path))
        wait.until(lambda d: text("answered-by").endswith(" s.") or shown("error"))
        assert not shown("error"), text("error")

    try:
        with live_api(params, scorer) as (url, _):
            driver.get(url + "/")
            wait.until(lambda d: "version 1" in text("model") and shown("card"))
            rows = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
                    for tr in driver.find_elements(By.CSS_SELECTOR, "#learned tbody tr")]
            assert rows == [["demo/A", "2025-03-01", "0.971", "-"], ["demo/B", "-", "0.883", "0.612"]]
            assert ("On methods it had not learned yet it scored AUC 0.612 on average: expect about that on a new "
                    "kind of forgery.") == text("unlearned")
            assert "answered 87% of the faces fake or real" in text("measured") and "96% of those" in text("measured")
            assert "right at least 95% of the time" in text("card-calibration")

            upload(files["face"], crop=True)
            verdict = driver.find_element(By.ID, "verdict")
            assert verdict.get_attribute("data-verdict") == "uncertain"
            assert verdict.text == "Uncertain: the model cannot tell"
            assert verdict.value_of_css_property("color") == "rgba(187, 102, 0, 1)"  # amber
            assert text("reason").startswith("Why: P(fake) ") and "lies between 0.00 and 1.00, where the model's " \
                "answers were right less than 95% of the time on validation faces of the 2 methods it learned." in text("reason")
            assert "unlike" not in text("reason")  # the novelty is its own note, not repeated
            assert shown("novel") and text("novel") == NOVEL
            assert text("summary").startswith("Calibrated P(fake) ") and "Every face is answered uncertain" in text("band")
            assert not shown("resembles")  # only a fake names the method it resembles
            for key in ("legend-p", "legend-uncertain"):
                assert text(key)
            assert "Novel" in text("legend") and "Resembles" in text("legend")
            assert "No sign of forgery found" not in driver.page_source and "Likely forged" not in driver.page_source

            upload(video)  # a video: the timeline right under the answer, and the frames that decided it
            assert driver.find_element(By.ID, "verdict").get_attribute("data-verdict") == "uncertain"
            assert shown("timeline-box") and not shown("photo")
            gap = driver.execute_script("return document.getElementById('timeline-box').getBoundingClientRect().top"
                                        " - document.getElementById('answer').getBoundingClientRect().bottom")
            assert 0 <= gap < 40, f"{gap} px between the answer and the timeline"
            assert shown("deciding") and "uncertain on its own" in text("deciding-why")
            assert driver.find_elements(By.CSS_SELECTOR, "#deciding-frames li")
            assert not shown("resembles")
            driver.save_screenshot(str(tmp_path / "uncertain_video.png"))

            scorer.detector.trust.band = (0.0, 0.0)  # now every face is answered fake
            upload(files["face"], crop=True)
            assert driver.find_element(By.ID, "verdict").get_attribute("data-verdict") == "fake"
            assert text("verdict") == "Likely forged"
            resembles = text("resembles")
            assert shown("resembles") and resembles.startswith("Resembles demo/") and "(similarity 0." in resembles
            assert "not proof of which tool made it" in resembles
            assert not shown("novel") or text("novel") == NOVEL
            assert not shown("deciding") and not shown("timeline-box")  # nothing of the video before stays

            upload(video)
            assert driver.find_element(By.ID, "verdict").get_attribute("data-verdict") == "fake"
            assert "are answered fake on their own" in text("deciding-why")
            items = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#deciding-frames li")]
            assert items and all("answered fake" in t for t in items), items
            assert driver.find_elements(By.CSS_SELECTOR, "#evidence figure.decided img")  # their heatmaps, outlined
            resembles = text("resembles")
            assert resembles.startswith("Resembles demo/") and "of the 16 frames answered fake resemble it most" in resembles

            # a model that learned only synthetic demo faces: the card and the answer say so
            assert not text("card-calibration").startswith("Warning")
            scorer.detector.info["learned"] = [dict(entry, synthetic=True) for entry in LEARNED]
            driver.get(url + "/")
            wait.until(lambda d: "version 1" in text("model") and shown("card"))
            assert text("card-calibration").startswith("Warning: this model learned only synthetic demo faces")
            upload(files["face"], crop=True)
            assert "on real photos and videos it was never measured" in text("reason")
        violations = [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]
        assert not violations, violations
    finally:
        driver.quit()


def test_swagger_ui_at_docs_works_offline_and_uploads_a_photo_with_the_token(files, monkeypatch):  # noqa: F811
    """/docs: Swagger UI from the files the server ships, under the page's CSP; its Authorize
    (the bearer scheme) and "Try it out" on POST /v1/detect (the declared multipart upload) give
    a verdict, and nothing is fetched from anywhere but the server."""
    import json

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    monkeypatch.setenv("DFCL_API_TOKEN", "docs-token")
    driver = chromium_driver()
    wait = WebDriverWait(driver, 180)
    try:
        with live_api(small_params()) as (url, _):
            driver.get(url + "/docs")
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
            paths = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")]
            assert paths == ["/health", "/v1/model", "/v1/detect"]
            driver.find_element(By.CSS_SELECTOR, ".btn.authorize").click()
            driver.find_element(By.ID, "auth-bearer-value").send_keys("docs-token")
            driver.find_element(By.CSS_SELECTOR, ".auth-btn-wrapper .authorize").click()
            driver.find_element(By.CSS_SELECTOR, ".auth-btn-wrapper .btn-done").click()
            op = driver.find_element(By.ID, "operations-default-detect")
            op.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
            wait.until(lambda d: op.find_elements(By.CSS_SELECTOR, ".try-out__btn"))
            op.find_element(By.CSS_SELECTOR, ".try-out__btn").click()
            wait.until(lambda d: op.find_elements(By.CSS_SELECTOR, "input[type=file]"))
            Select(op.find_element(By.CSS_SELECTOR, "tr[data-param-name='crop'] select")).select_by_visible_text("true")
            op.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(files["face"]))
            op.find_element(By.CSS_SELECTOR, ".execute").click()
            wait.until(lambda d: op.find_elements(By.CSS_SELECTOR, ".live-responses-table .response-col_status"))
            status = op.find_elements(By.CSS_SELECTOR, ".live-responses-table .response-col_status")[-1].text
            body = op.find_element(By.CSS_SELECTOR, ".live-responses-table .response-col_description pre").text
            assert status == "200", body[:500]
            verdict = json.loads(body)
            assert verdict["verdict"] in ("fake", "real", "uncertain") and verdict["kind"] == "face crop"
            fetched = driver.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
            assert f"{url}/v1/detect?explain=false&crop=true" in fetched
            assert all(u.startswith(url + "/") for u in fetched), fetched
        problems = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"
                    or "Content Security Policy" in e["message"]]
        assert not problems, problems
    finally:
        driver.quit()
