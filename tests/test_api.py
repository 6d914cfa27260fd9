"""`dfcl api`: the REST API on the champion, its limits, the hot swap after a real approval
and rollback, the web page in a real headless Chromium, and MLflow's own model server."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from dfcl.serving.api import create_app
from tests.conftest import SMALL, free_port, run_dfcl, small_params
from tests.test_pipeline import approve_when_paused, finish
from tests.test_web import chromium_driver

REGISTERED = "deepfake-detector"


def post(client, path: Path, name: str | None = None, **query):
    with open(path, "rb") as f:
        return client.post("/v1/detect", params=query, files={"file": (name or path.name, f)})


def test_api_answers_like_the_cli_and_every_bad_upload_gets_its_reason(champion, media):
    params = small_params("api.max_upload_mb=3", "api.max_video_seconds=20", "api.reload_s=60")
    with TestClient(create_app(params), base_url="http://127.0.0.1") as client:
        assert client.get("/health").json()["version"] == "1"
        card = client.get("/v1/model").json()
        assert (card["version"], card["alias"], card["architecture"], card["image_size"]) == ("1", "champion", "small_cnn", 32)
        assert card["methods"] == ["BlendSwap"] and card["limits"]["max_upload_mb"] == 3
        assert "/v1/detect" in client.get("/openapi.json").json()["paths"]
        assert "Is this photo or video forged?" in client.get("/").text

        photo = post(client, media["photo"], explain="true")
        assert photo.status_code == 200, photo.text
        body = photo.json()
        assert body["file"] == "frame.jpg" and body["kind"] == "photo" and body["faces"][0]["box"]
        assert body["model"]["version"] == "1" and body["verdict"] in ("fake", "real", "uncertain")
        assert body["evidence"][0]["image"].startswith("data:image/png;base64,")
        crop = post(client, media["dfdc_fake"])
        assert crop.status_code == 200 and crop.json()["kind"] == "face crop"

        cases = {  # file, name it is sent as -> status, reason
            "text_mp4": (415, "cannot open video: its first bytes"), "truncated": (422, "cannot open video"),
            "empty": (422, "empty file"), "noface": (422, "no face found"), "truncated_jpeg": (422, "truncated image"),
            "unsupported": (415, "is not accepted"),
            "video": (422, "over the limit of 20 s"),  # a 30 s FF++ video
        }
        for key, (status, reason) in cases.items():
            r = post(client, media[key])
            assert r.status_code == status, (key, r.text)
            assert reason in r.json()["error"], (key, r.json())
        big = media["photo"].parent / "big.jpg"
        big.write_bytes(media["photo"].read_bytes() + os.urandom(4 * 2**20))  # over 3 MB
        r = post(client, big)
        assert r.status_code == 413 and "over the limit of 3 MB" in r.json()["error"]
        # Streamed without a Content-Length, the cap still holds.
        boundary = "dfcltest"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jpg\"\r\n"
                "Content-Type: image/jpeg\r\n\r\n").encode()

        def chunks():
            yield head
            for _ in range(4):
                yield os.urandom(2**20)
            yield f"\r\n--{boundary}--\r\n".encode()

        r = client.post("/v1/detect", content=chunks(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        assert r.status_code == 413, r.text
        r = client.post("/v1/detect", data={"not_file": "x"})
        assert r.status_code == 422 and "field 'file'" in r.json()["error"]
        # ... and it still serves.
        assert post(client, media["dfdc_real"]).status_code == 200

    # Under the video limit, a video gets its timeline.
    with TestClient(create_app(small_params("api.reload_s=60")), base_url="http://127.0.0.1") as client:
        r = post(client, media["video"])
        assert r.status_code == 200 and len(r.json()["frames"]) == 16


def test_the_openapi_contract_validates_and_a_client_built_from_it_reads_a_verdict(champion, media, monkeypatch):
    """/openapi.json is a valid OpenAPI document, and a client that knows only it (tests.openapi_client)
    calls every route as it says: the photo as the multipart field it declares, the bearer token
    its security scheme asks for; every answer, errors included, is what the schema says."""
    from openapi_spec_validator import validate

    from tests.openapi_client import SchemaClient

    monkeypatch.setenv("DFCL_API_TOKEN", "contract-token")
    with TestClient(create_app(small_params("api.reload_s=60")), base_url="http://127.0.0.1") as http:
        spec = http.get("/openapi.json").json()
        validate(spec)
        client = SchemaClient(http, spec, token="contract-token")
        scheme = spec["components"]["securitySchemes"]["bearer"]
        assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
        answers = {}
        for path, method, operation in client.operations():
            assert "200" in operation["responses"] and operation["responses"]["200"]["content"]["application/json"][
                "schema"] != {}, (path, "an answer without a schema")
            files = {name: media["photo"] for name in client.file_fields(path, method)}
            if path.startswith("/v1/"):  # the token is required: the schema says so, and the server holds to it
                assert operation["security"] == [{"bearer": []}], path
                refused = client.call(path, method, files=files, authorize=False)
                assert refused.status_code == 401 and "access token" in client.read(path, method, refused)["error"]
            query = {"explain": True} if any(p["name"] == "explain" for p in operation.get("parameters", [])) else {}
            r = client.call(path, method, params=query, files=files)
            assert r.status_code == 200, (path, r.text)
            answers[path] = client.read(path, method, r)
        assert set(answers) == {"/health", "/v1/model", "/v1/detect"}

        # The verdict, read as the schema declares it.
        declared = client.resolve(spec["paths"]["/v1/detect"]["post"]["responses"]["200"]["content"]["application/json"]["schema"])
        verdict = answers["/v1/detect"]
        assert set(declared["required"]) <= set(verdict) and "multipart/form-data" in spec["paths"]["/v1/detect"]["post"]["requestBody"]["content"]
        assert verdict["file"] == media["photo"].name and verdict["kind"] == "photo"
        assert verdict["verdict"] in client.resolve(declared["properties"]["verdict"])["enum"]
        assert 0 <= verdict["p_fake"] <= 1 and len(verdict["faces"][0]["box"]) == 4
        assert verdict["model"]["version"] == answers["/v1/model"]["version"] == answers["/health"]["version"] == "1"
        assert verdict["evidence"][0]["image"].startswith("data:image/png;base64,")
        r = client.call("/v1/detect", "post", files={"file": media["video"]})
        video = client.read("/v1/detect", "post", r)
        assert r.status_code == 200 and video["kind"] == "video" and len(video["frames"]) == 16 and video["video"]["fps"] > 0  # its timeline too

        # Every refusal in the one shape its status declares.
        r = client.call("/v1/detect", "post", files={"file": media["unsupported"]})
        assert r.status_code == 415 and "is not accepted" in client.read("/v1/detect", "post", r)["error"]
        r = client.call("/v1/detect", "post", files={"file": media["noface"]})
        assert r.status_code == 422 and client.read("/v1/detect", "post", r)["verdict"] == "error"
        r = http.post("/v1/detect", data={"not_file": "x"}, headers={"Authorization": "Bearer contract-token"})
        assert r.status_code == 422 and "field 'file'" in client.read("/v1/detect", "post", r)["error"]
        r = http.get("/v1/detect", headers={"Authorization": "Bearer contract-token"})
        assert r.status_code == 405 and r.headers["allow"] == "POST" and set(r.json()) == {"error"}
        assert http.get("/no/such/route").json() == {"error": "Not Found"}

        # Swagger UI, from the files the server ships: nothing from another origin.
        docs = http.get("/docs")
        assert docs.status_code == 200 and "http" not in docs.text and "<script>" not in docs.text
        for asset in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css", "/static/docs.js"):
            assert http.get(asset).status_code == 200, asset


def test_no_champion_is_a_503_with_the_reason(workspace):
    with TestClient(create_app(small_params("api.reload_s=60")), base_url="http://127.0.0.1") as client:
        r = client.get("/health")
        assert r.status_code == 503 and "has the alias 'champion'" in r.json()["error"]
        assert r.headers["retry-after"] == "60"  # api.reload_s: when the alias is looked at again
        for r in (client.get("/v1/model"), client.post("/v1/detect", files={"file": ("a.jpg", b"x")})):
            assert r.status_code == 503 and r.headers["retry-after"] == "60" and "has the alias" in r.json()["error"]


def test_hot_swap_follows_approval_and_rollback_and_requests_in_flight_keep_their_model(champion, demo_data, media,
                                                                                       prefect_api_url):
    """Version 1 is served; a retraining run is approved by ops (`dfcl approve`), and within
    api.reload_s the API serves version 2 without a restart; `dfcl rollback` brings back 1.
    A request that started on version 1 answers from version 1 even when the swap happens
    while it runs."""
    # The held request waits out a whole retraining: on a busy machine longer than the default
    # detection timeout (120 s), which test_robustness covers.
    params = small_params("api.reload_s=1", "api.detect_timeout_s=1800")
    with TestClient(create_app(params), base_url="http://127.0.0.1") as client:
        holder = client.app.state.holder
        assert client.get("/v1/model").json()["version"] == "1"

        # A request in flight on version 1: hold it inside detection until the swap is done.
        started, release, answers = threading.Event(), threading.Event(), {}
        old = holder.current
        detect = old.detect

        def slow_detect(*args, **kwargs):
            started.set()
            release.wait(600)
            return detect(*args, **kwargs)

        old.detect = slow_detect
        inflight = threading.Thread(target=lambda: answers.update(r=post(client, media["dfdc_fake"])))
        inflight.start()
        assert started.wait(120)

        proc = run_dfcl(["retrain", str(demo_data / "GANUpsample"), "-S", "approval.timeout_s=600",
                         *small_cli_overrides("train.epochs=2", "gate.max_forgetting=1", "gate.max_drop_per_method=1",
                                               "gate.max_drop_average=1")], champion, prefect_api_url)
        approve_when_paused(proc, champion, prefect_api_url, "approve", "--reason", "hot swap test")
        out = finish(proc, timeout=600)
        assert proc.returncode == 0 and "outcome: promoted" in out, out[-3000:]
        wait_for_version(client, "2")
        assert client.get("/v1/model").json()["methods"] == ["BlendSwap", "GANUpsample"]
        release.set()
        inflight.join(120)
        assert answers["r"].status_code == 200 and answers["r"].json()["model"]["version"] == "1"
        assert post(client, media["dfdc_fake"]).json()["model"]["version"] == "2"

        rollback = run_dfcl(["rollback", "--by", "ops", "--reason", "hot swap test"], champion, prefect_api_url)
        said, _ = rollback.communicate(timeout=300)
        assert rollback.returncode == 0, said
        wait_for_version(client, "1")


def small_cli_overrides(*extra: str) -> list[str]:
    """tests.conftest.small_params as -S arguments, for `dfcl` in a subprocess."""
    return [a for o in SMALL + list(extra) for a in ("-S", o)]


def wait_for_version(client, version: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if client.get("/v1/model").json().get("version") == version:
            return
        time.sleep(0.5)
    pytest.fail(f"the API did not move to version {version}: {client.get('/v1/model').json()}")


@pytest.fixture(scope="module")
def api_server(champion_root, tmp_path_factory):
    """`dfcl api` as users start it, on a free port of 127.0.0.1, on the champion's workspace:
    one for the module (the web page, then the SIGTERM test stops it)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env["DFCL_WORKSPACE"] = str(champion_root)
    log_file = tmp_path_factory.mktemp("api") / "api.log"
    log = open(log_file, "w")
    proc = subprocess.Popen([sys.executable, "-m", "dfcl.cli", "api", "--port", str(port)], cwd=champion_root, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(f"{url}/health", proc, log_file)
    yield url, proc, log_file
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


def wait_healthy(url: str, proc, log: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(1)
    pytest.fail(f"{url} never answered:\n{log.read_text()[-3000:]}")


def test_web_page_in_chromium_shows_the_verdict_faces_and_model(api_server, media, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    url, _, _ = api_server
    driver = chromium_driver()
    try:
        driver.get(url + "/")
        wait = WebDriverWait(driver, 180)
        wait.until(EC.text_to_be_present_in_element((By.ID, "model"), "version 1"))
        for key in ("dfdc_real", "dfdc_fake", "video"):
            with open(media[key], "rb") as f:
                expected = httpx.post(f"{url}/v1/detect", files={"file": (media[key].name, f)}, timeout=300).json()
            driver.find_element(By.ID, "file").send_keys(str(media[key]))
            wait.until(lambda d: d.find_element(By.ID, "answered-by").text.endswith(" s.")
                       and d.find_element(By.ID, "verdict").get_attribute("data-verdict") in ("fake", "real", "uncertain"))
            shown = driver.find_element(By.ID, "verdict")
            assert shown.get_attribute("data-verdict") == expected["verdict"], key
            assert shown.text == {"fake": "Likely forged", "real": "No sign of forgery found",
                                  "uncertain": "Uncertain: the model cannot tell"}[expected["verdict"]]
            assert f"P(fake) {expected['p_fake']:.3f}" in driver.find_element(By.ID, "summary").text
            assert "version 1 (champion)" in driver.find_element(By.ID, "answered-by").text
            assert driver.find_elements(By.CSS_SELECTOR, "#evidence img"), "no heatmap shown"
            if key == "video":
                assert driver.find_element(By.ID, "timeline").is_displayed()
            else:
                assert driver.find_element(By.ID, "photo").is_displayed()
            driver.save_screenshot(str(tmp_path / f"page_{key}.png"))
            # Reset the input so the next file triggers `change` again.
            driver.execute_script("document.getElementById('file').value = ''; "
                                  "document.getElementById('answered-by').textContent = '';")
        assert (tmp_path / "page_dfdc_fake.png").stat().st_size > 10_000
    finally:
        driver.quit()


def test_api_stops_cleanly_on_sigterm(api_server):
    url, proc, log = api_server
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(60) == 0
    assert "dfcl api: stopped (SIGTERM)" in log.read_text()


def test_mlflow_models_serve_answers_p_fake_for_uint8_crops(champion, media, tmp_path):
    """The registered model through MLflow's own server: uint8 crops in, the P(fake) dfcl computes out."""
    import cv2

    from dfcl.measure.scoring import fake_probabilities
    from dfcl.serving.detector import load_detector

    detector = load_detector(f"models:/{REGISTERED}@champion", small_params(), champion)
    crops = np.stack([cv2.resize(cv2.cvtColor(cv2.imread(str(media[k])), cv2.COLOR_BGR2RGB), (32, 32),
                                 interpolation=cv2.INTER_AREA) for k in ("dfdc_real", "dfdc_fake", "stylegan")])
    expected = fake_probabilities(detector.model, crops).numpy()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m",
                             f"models:/{REGISTERED}@champion", "--env-manager", "local", "-h", "127.0.0.1",
                             "-p", str(port)], cwd=champion, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/ping", proc, tmp_path / "serve.log")
        r = httpx.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": crops.tolist()}, timeout=120)
        assert r.status_code == 200, r.text
        assert np.allclose(np.asarray(r.json()["predictions"], float), expected, atol=1e-5)
        wrong = httpx.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": crops[:, :16].tolist()}, timeout=120)
        assert wrong.status_code == 400  # the signature holds the input size
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
