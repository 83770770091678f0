"""The page at ``/`` and the run's HTML report in a real headless Chromium (Debian's chromium + chromedriver, at
explicit paths: Selenium Manager is never used)."""

import json
import urllib.parse
import urllib.request

import pytest

from thinkrec.serve import ServeConfig, create_app
from thinkrec.testing.browser import APT_HINT, headless_chrome, missing_browser, running_server

WAIT_S = 30


@pytest.fixture(scope="module")
def browser():
    missing = missing_browser()
    if missing is not None:
        pytest.skip(f"{missing} not found; .ci/run installs chromium and chromedriver via apt-get "
                    f"(apt-get install chromium chromium-driver). {APT_HINT}")
    driver = headless_chrome(1280, 1000)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(funnel, browser):
    with running_server(create_app(funnel, ServeConfig())) as url:
        yield url


def _wait(driver, cond, timeout=WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(cond)


def _get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _rows(driver):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#results tbody tr.rec-item")


def _row_ids(rows):
    from selenium.webdriver.common.by import By

    return [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows]


def _error_shown(driver):
    from selenium.webdriver.common.by import By

    e = driver.find_element(By.ID, "error")
    return e if e.is_displayed() and e.text else False


def test_page_recommends_explains_searches_and_shows_errors(funnel, server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    d = browser
    d.get(server + "/")
    # (a) run info and the stage choices come from /v1/info
    info = _get(server + "/v1/info")
    _wait(d, lambda d: d.find_element(By.ID, "run-info").text.strip() not in ("", "loading…"))
    assert info["dataset"] in d.find_element(By.ID, "run-info").text
    for sel, names in (("retriever", info["retrievers"]), ("reranker", info["rerankers"])):
        values = [o.get_attribute("value") for o in Select(d.find_element(By.ID, sel)).options]
        assert values == ["", *names], sel
    assert "eglr" in info["rerankers"]

    # (b) a known user, EGLR, explain on: the funnel's list, the user's history, EGLR's reasoning table
    user = str(funnel.user_ids[3])
    d.find_element(By.ID, "user").send_keys(user)
    Select(d.find_element(By.ID, "retriever")).select_by_value("merged")  # EGLR re-ranks the merged candidates
    Select(d.find_element(By.ID, "reranker")).select_by_value("eglr")
    assert d.find_element(By.ID, "explain").is_selected()
    # the seen-item switch starts at the run's policy (the evaluated list's), its reason as the tooltip
    assert d.find_element(By.ID, "exclude-seen").is_selected() == funnel.seen["exclude"]
    k = int(d.find_element(By.ID, "k").get_attribute("value"))
    assert k == 10
    d.find_element(By.ID, "recommend").click()
    rows = _wait(d, lambda d: _rows(d) or False)
    expected = funnel.recommend(users=[user], k=10, retriever="merged", reranker="eglr")[0]
    assert len(rows) == k
    assert _row_ids(rows) == [it.item_id for it in expected.items]
    history = [li.text for li in d.find_elements(By.CSS_SELECTOR, "#history li")]
    assert len(history) == len(expected.history) > 0
    assert all(f"[{i}]" in text for i, text in zip(expected.history, history, strict=True))
    assert d.find_element(By.ID, "history-note").text == f"user {user}"
    table = _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#explanation-body #eglr-table") or False)[0]
    data_rows = [tr for tr in table.find_elements(By.TAG_NAME, "tr") if tr.find_elements(By.TAG_NAME, "td")]
    # one row per position EGLR decodes step by step (rerank.model.max_decode; the rest follow its last step's scores)
    decoded = min(k, funnel.reranker("eglr").cfg.max_decode)
    assert len(data_rows) == decoded > 0
    if decoded < k:
        assert f"positions {decoded + 1}–{k} were not decoded" in d.find_element(By.ID, "explanation-body").text

    # (c) an unknown user: the server's message in the error box, the stale list gone
    box = d.find_element(By.ID, "user")
    box.clear()
    box.send_keys("no-such-user")
    d.find_element(By.ID, "recommend").click()
    err = _wait(d, _error_shown)
    assert "unknown user" in err.text and "422" in err.text
    assert not _rows(d) and not d.find_elements(By.CSS_SELECTOR, "#history li")
    assert not d.find_elements(By.ID, "eglr-table")

    # (d) search the catalogue → click a hit into the built history → recommend from that history
    top = _get(server + "/v1/items?limit=1")["items"][0]  # the most interacted item: first hit of any word of its title
    assert top["title"], "the synthetic catalogue has titles"
    word = max(top["title"].split(), key=len)
    d.find_element(By.ID, "search").send_keys(word)
    d.find_element(By.ID, "search-go").click()
    hits = _wait(d, lambda d: [li for li in d.find_elements(By.CSS_SELECTOR, "#search-results li")
                               if f"[{top['item_id']}]" in li.text] or False)
    assert word.lower() in hits[0].text.lower()
    hits[0].click()
    pills = _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#built-history .pill") or False)
    assert [p.text for p in pills] == [top["item_id"]]
    assert d.find_element(By.ID, "user").get_attribute("value") == ""  # the built history replaces the user
    d.find_element(By.ID, "recommend").click()
    _wait(d, lambda d: d.find_element(By.ID, "history-note").text == "given history" and _rows(d))
    assert not _error_shown(d)
    by_history = funnel.recommend(histories=[[top["item_id"]]], k=10, retriever="merged", reranker="eglr")[0]
    assert _row_ids(_rows(d)) == [it.item_id for it in by_history.items]
    assert [li.text for li in d.find_elements(By.CSS_SELECTOR, "#history li")] == [f"{top['title']} [{top['item_id']}]"]


def test_report_renders_with_inline_plots(served_run, browser):
    from selenium.webdriver.common.by import By

    d = browser
    d.get((served_run / "report.html").resolve().as_uri())
    heading = _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "h1, h2") or False)[0]
    assert d.title.strip() and heading.text.strip()
    imgs = _wait(d, lambda d: d.find_elements(By.TAG_NAME, "img") or False)
    assert all(urllib.parse.urlparse(i.get_attribute("src")).scheme == "data" for i in imgs)  # self-contained
    _wait(d, lambda d: any(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i) > 0
                           for i in imgs))
