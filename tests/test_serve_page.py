"""The web chat page of `python -m tfchat.serve` in a real browser (headless
Chromium through Selenium): a streamed two-turn conversation whose replies
are the API's own, and a thumbs-up that lands in the --feedback file."""

import json
import os
import pathlib
import urllib.request

import pytest

from served import running_server

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
MAX_TOKENS = 200  # the page's default

missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
if missing:
    pytest.skip(f"the page test needs Debian's chromium and chromedriver; missing {missing}",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="the page test needs selenium")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def artifacts_folder():
    folder = pathlib.Path(os.environ.get("TFCHAT_TEST_ARTIFACTS", "/tmp/tfchat-test-artifacts/"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def api_reply(url, messages):
    """The API's non-streamed reply to `messages` at temperature 0."""
    body = json.dumps({"messages": messages, "temperature": 0, "max_tokens": MAX_TOKENS})
    request = urllib.request.Request(url + "/v1/chat/completions", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)["choices"][0]["message"]["content"]


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1000,700"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def say(driver, text):
    """Types `text`, sends it with Enter, and returns the new reply's text
    once its stream finished."""
    before = len(driver.find_elements(By.CSS_SELECTOR, ".reply.assistant"))
    box = driver.find_element(By.ID, "message")
    box.send_keys(text)
    box.send_keys("\n")
    wait = WebDriverWait(driver, 60)
    wait.until(lambda d: len(d.find_elements(
        By.CSS_SELECTOR, '.reply.assistant[data-done="true"]')) > before
        or d.find_elements(By.CSS_SELECTOR, ".error"))
    assert not driver.find_elements(By.CSS_SELECTOR, ".error"), driver.find_element(
        By.CSS_SELECTOR, ".error").text
    reply = driver.find_elements(By.CSS_SELECTOR, ".reply.assistant")[-1]
    return reply, reply.find_element(By.CSS_SELECTOR, ".content").get_attribute("textContent")


@pytest.mark.slow  # a real browser and a server process
def test_page_chats_streams_and_records_feedback(chat_run, tmp_path, browser):
    prefs = tmp_path / "prefs.jsonl"
    with running_server(chat_run, "--feedback", str(prefs)) as url:
        browser.get(url + "/")
        assert browser.execute_script("return SETTINGS") == {
            "model": "chat", "chats": True, "feedback": True, "needsKey": False}
        temperature = browser.find_element(By.ID, "temperature")
        assert temperature.get_attribute("value") == "0.7"
        temperature.clear()
        temperature.send_keys("0")

        first = [{"role": "user", "content": "how are you?"}]
        reply, text = say(browser, "how are you?")
        expected = api_reply(url, first)
        assert text == expected, (text, expected)
        assert text  # the tiny run learned its answer; an empty one would prove little

        reply.find_element(By.CSS_SELECTOR, ".thumb-up").click()
        status = browser.find_element(By.ID, "status")
        WebDriverWait(browser, 20).until(lambda d: "feedback recorded" in status.text)
        records = [json.loads(line) for line in prefs.read_text(encoding="utf-8").splitlines()]
        assert records == [{"prompt": first,
                            "completion": [{"role": "assistant", "content": text}],
                            "label": True}]

        # The second turn carries the first: the page keeps the history.
        second = first + [{"role": "assistant", "content": text},
                          {"role": "user", "content": "ping"}]
        reply2, text2 = say(browser, "ping")
        assert text2 == api_reply(url, second)
        assert len(browser.find_elements(By.CSS_SELECTOR, ".reply.assistant")) == 2

        # Retry replaces the last reply (the same one, at temperature 0).
        reply2.find_element(By.CSS_SELECTOR, ".retry").click()
        WebDriverWait(browser, 60).until(lambda d: len(d.find_elements(
            By.CSS_SELECTOR, '.reply.assistant[data-done="true"]')) == 2)
        replies = browser.find_elements(By.CSS_SELECTOR, ".reply.assistant .content")
        assert [r.get_attribute("textContent") for r in replies] == [text, text2]

        screenshot = artifacts_folder() / "serve_page.png"
        browser.save_screenshot(str(screenshot))
        print(f"screenshot: {screenshot}")

        # The API's error is shown, and the message goes back to the box.
        temperature.clear()
        temperature.send_keys("5")
        box = browser.find_element(By.ID, "message")
        box.send_keys("ping\n")
        error = WebDriverWait(browser, 20).until(lambda d: d.find_element(By.CSS_SELECTOR, ".error"))
        assert "'temperature' must be between" in error.text
        assert box.get_attribute("value") == "ping"

        browser.find_element(By.ID, "new-chat").click()
        assert not browser.find_elements(By.CSS_SELECTOR, "#log > *")
        assert len(prefs.read_text(encoding="utf-8").splitlines()) == 1
