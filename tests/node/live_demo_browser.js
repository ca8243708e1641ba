// Debian's chromium, driven by puppeteer-core, against `spool serve`'s live views:
// opens /live-demo, clicks the counter, types and submits todos, ticks and removes one, and
// checks that the page changed each time; then opens /dashboard and waits for its uptime to
// move. Saves screenshots. Run by tests/tests/live_browser.rs:
//   node live_demo_browser.js http://127.0.0.1:PORT SCREENSHOT_DIR
// Prints "ok live_demo_browser" and exits 0, or prints what went wrong and exits 1. A browser
// that cannot start is a failure, never a skip.
"use strict";
const path = require("path");
const puppeteer = require("puppeteer-core");

const [base, shots] = process.argv.slice(2);
const executablePath = process.env.SPOOL_CHROMIUM || "/usr/bin/chromium";
const hardTimeout = setTimeout(() => {
  console.error("live_demo_browser: timed out");
  process.exit(1);
}, 60000);

async function main() {
  const browser = await puppeteer.launch({
    executablePath,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"],
  });
  const wire = [];
  try {
    const page = await browser.newPage();
    page.on("console", (m) => wire.push("console: " + m.text()));
    page.on("pageerror", (e) => wire.push("page error: " + e.message));
    await page.setViewport({ width: 900, height: 900 });
    await page.goto(base + "/live-demo", { waitUntil: "load" });
    await page.waitForFunction(() => window.spool && window.spool.state === "live", { timeout: 10000 });

    const text = (sel) => page.$eval(sel, (e) => e.textContent);
    const waitText = (sel, want) =>
      page.waitForFunction(
        (s, w) => document.querySelector(s) && document.querySelector(s).textContent === w,
        { timeout: 5000 },
        sel,
        want,
      );

    // The counter.
    for (let i = 0; i < 3; i++) await page.click("#inc");
    await waitText("#count", "3");
    await page.click("#dec");
    await waitText("#count", "2");

    // Todos: type (each keystroke goes to the server), submit with Enter, and with the button.
    // The first title is typed with no delay, so Enter goes out while the updates for the last
    // keystrokes are still on their way: the reset of the input must survive them.
    await page.click("#todo-input");
    await page.type("#todo-input", "buy milk", { delay: 0 });
    await page.keyboard.press("Enter");
    await waitText("#todo-left", "1 of 1 left");
    await page.waitForFunction(() => document.querySelector("#todo-input").value === "", { timeout: 5000 });
    await page.type("#todo-input", "walk the dog", { delay: 15 });
    await page.click("#todo-form button");
    await waitText("#todo-left", "2 of 2 left");
    const titles = await page.$$eval("#todo-list .title", (es) => es.map((e) => e.textContent));
    if (JSON.stringify(titles) !== JSON.stringify(["buy milk", "walk the dog"]))
      throw new Error("todo titles: " + JSON.stringify(titles));
    // Tick the first off, remove the second.
    await page.click("#todo-list li:nth-child(1) input[type=checkbox]");
    await waitText("#todo-left", "1 of 2 left");
    await page.waitForFunction(() => document.querySelector("#todo-list li").className === "done", { timeout: 5000 });
    await page.click("#todo-list li:nth-child(2) .remove");
    await waitText("#todo-left", "0 of 1 left");
    // A row removed above another: the DOM node of the one below moves up (a keyed move).
    await page.type("#todo-input", "call mom", { delay: 15 });
    await page.keyboard.press("Enter");
    await waitText("#todo-left", "1 of 2 left");
    await page.click("#todo-list li:nth-child(1) .remove");
    await waitText("#todo-left", "1 of 1 left");
    const left = await page.$$eval("#todo-list .title", (es) => es.map((e) => e.textContent));
    if (JSON.stringify(left) !== JSON.stringify(["call mom"])) throw new Error("todo titles: " + JSON.stringify(left));
    await page.type("#todo-input", "write tests", { delay: 15 });
    await page.keyboard.press("Enter");
    await waitText("#todo-left", "2 of 2 left");
    if ((await text("#count")) !== "2") throw new Error("the counter moved");
    const updates = await page.evaluate(() => window.spool.updates);
    await page.screenshot({ path: path.join(shots, "live-demo.png") });

    // The dashboard changes every second by itself.
    await page.goto(base + "/dashboard", { waitUntil: "load" });
    await page.waitForFunction(() => window.spool && window.spool.state === "live", { timeout: 10000 });
    const first = await text("#uptime");
    await page.waitForFunction((f) => document.querySelector("#uptime").textContent !== f, { timeout: 5000 }, first);
    await page.waitForFunction(() => Number(document.querySelector("#live-sessions").textContent) >= 1, { timeout: 5000 });
    wire.push("live sessions: " + (await text("#live-sessions")));
    await page.screenshot({ path: path.join(shots, "dashboard.png") });
    console.log(`ok live_demo_browser (${updates} updates applied on /live-demo)`);
  } catch (e) {
    console.error("live_demo_browser failed: " + (e && e.stack ? e.stack : e));
    for (const line of wire.slice(-20)) console.error("  " + line);
    process.exitCode = 1;
  } finally {
    await browser.close();
    clearTimeout(hardTimeout);
  }
}

main().catch((e) => {
  console.error("live_demo_browser: the browser could not start or run: " + (e && e.stack ? e.stack : e));
  process.exit(1);
});
