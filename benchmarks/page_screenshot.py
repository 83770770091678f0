"""A screenshot of the serving page (``thinkrec serve``'s ``/``) with one recommendation and its explanation rendered,
taken in a headless Chromium (``/usr/bin/chromium`` + ``/usr/bin/chromedriver``; ``.ci/run`` installs them with
``apt-get install chromium chromium-driver``).

    python benchmarks/page_screenshot.py --run runs/beauty --out benchmarks/results/serve_page.png [--user ID]

The app is served in-process on a free local port; the user (default: the first with ≥ 5 history items) is asked
for with "explain" ticked and the EGLR re-ranker when the run trained one. Prints the PNG's path.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from thinkrec.pipeline.funnel import load
from thinkrec.serve import ServeConfig, create_app
from thinkrec.testing.browser import headless_chrome, running_server


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/beauty", help="a trained run directory")
    ap.add_argument("--out", default="benchmarks/results/serve_page.png", help="the PNG to write")
    ap.add_argument("--user", default=None, help="a user id (default: the first user with ≥ 5 history items)")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=1300)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the page / the answer")
    args = ap.parse_args(argv)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    funnel = load(args.run)
    if args.user is not None:
        user = args.user
    else:
        user = next((str(u) for i, u in enumerate(funnel.user_ids) if len(funnel.history_of(i)) >= 5), None)
        if user is None:
            raise SystemExit(f"{args.run}: no user with ≥ 5 history items; pass --user")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    driver = headless_chrome(args.width, args.height)  # first: a missing browser fails before the server starts
    try:
        with running_server(create_app(funnel, ServeConfig())) as url:
            wait = WebDriverWait(driver, args.timeout)
            driver.get(url + "/")
            wait.until(lambda d: d.find_element(By.ID, "run-info").text.strip() not in ("", "loading…"))
            driver.find_element(By.ID, "user").send_keys(user)
            explain = driver.find_element(By.ID, "explain")
            if not explain.is_selected():
                explain.click()
            if "eglr" in funnel.models["rerankers"]:
                Select(driver.find_element(By.ID, "reranker")).select_by_value("eglr")
            driver.find_element(By.ID, "recommend").click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results tbody tr.rec-item")
                       or (d.find_element(By.ID, "error").is_displayed() and d.find_element(By.ID, "error").text))
            error = driver.find_element(By.ID, "error")
            if error.is_displayed():
                raise SystemExit(f"the page answered with an error: {error.text}")
            if not driver.save_screenshot(str(out)):
                raise SystemExit(f"could not write {out}")
    finally:
        driver.quit()
    print(out)


if __name__ == "__main__":
    main()
