"""A screenshot of the serving page with a recommendation and its explanation rendered (headless Chromium).

    python benchmarks/page_screenshot.py [--run runs/beauty] [--out benchmarks/results/serve_page.png] [--user ID]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from thinkrec.pipeline.funnel import load
from thinkrec.serve import ServeConfig, create_app
from thinkrec.serve.testing import headless_chrome, running_server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/beauty")
    ap.add_argument("--out", default="benchmarks/results/serve_page.png")
    ap.add_argument("--user", default=None, help="default: the first user with ≥ 5 history items")
    args = ap.parse_args()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    funnel = load(args.run)
    user = args.user or next(u for i, u in enumerate(funnel.user_ids) if len(funnel.history_of(i)) >= 5)
    driver = headless_chrome(1400, 1300)
    try:
        with running_server(create_app(funnel, ServeConfig())) as url:
            driver.get(url + "/")
            WebDriverWait(driver, 60).until(lambda d: "loading" not in d.find_element(By.ID, "run-info").text)
            driver.find_element(By.ID, "user").send_keys(user)
            if "eglr" in funnel.models["rerankers"]:
                Select(driver.find_element(By.ID, "reranker")).select_by_value("eglr")
            driver.find_element(By.ID, "recommend").click()
            WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results tbody tr.rec-item"))
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(args.out)
    finally:
        driver.quit()
    print(args.out)


if __name__ == "__main__":
    main()
