// The apalis board checked as an operator would: headless Chromium (Debian's chromium, driven by
// playwright-core) signs in with basic auth and reads the pages. Run by tests/api/board.rs
// against a freshly spawned server that has run some jobs, one of them failing:
//
//   node tests/js/board.mjs '{"url": "http://127.0.0.1:PORT", "chromium": "/usr/bin/chromium",
//     "username": "admin@example.com", "password": "...", "queues": ["assign-agent", ...],
//     "cronWorkers": ["sweep", "reconcile", "redeliver"],
//     "failed": {"queue": "record-audit", "id": "01...", "attempt": 2, "error": "audit_log"},
//     "screenshots": "target/board-embedded"}'
//
// `failed.attempt` is the least attempt number the failed task must show: it may still be
// retried while the browser looks.
//
// Success: one line of JSON on stdout, exit code 0. Failure: the step and the reason on stderr
// (and a screenshot of the page as it was), exit code 1. Every wait is bounded by WAIT_MS.

import { chromium } from "playwright-core";

/** How long any one wait (a page, a text appearing) may take. */
const WAIT_MS = 15_000;

/** A failed expectation: its message is the whole story, no stack trace needed. */
class Failure extends Error {}

let step = "reading the configuration";

function fail(message) {
  throw new Failure(message);
}

/** Waits until `text` is visible on `page` (exactly, as a whole text node, unless `partial`). */
async function shows(page, text, { partial = false } = {}) {
  try {
    await page.getByText(text, { exact: !partial }).first().waitFor({ state: "visible", timeout: WAIT_MS });
  } catch {
    const body = (await page.innerText("body").catch(() => "")).replace(/\s+/g, " ").slice(0, 2000);
    fail(`${JSON.stringify(text)} is not shown; the page reads: ${body}`);
  }
}

/**
 * Opens `url` until `text` is shown there: a page loads its data once, and a task being retried
 * leaves the failed list for the moment it runs.
 */
async function opensShowing(page, url, text) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    await page.goto(url);
    try {
      await page.getByText(text, { exact: true }).first().waitFor({ state: "visible", timeout: 3_000 });
      return;
    } catch {
      if (Date.now() > deadline) {
        await shows(page, text);
        return;
      }
    }
  }
}

const config = JSON.parse(process.argv[2] ?? fail("usage: node board.mjs '<json config>'"));
const browser = await chromium.launch({
  executablePath: config.chromium,
  // Tests may run as root, where Chromium's sandbox cannot start.
  args: ["--no-sandbox"],
});
const context = await browser.newContext({
  httpCredentials: { username: config.username, password: config.password },
  viewport: { width: 1400, height: 900 },
});
const page = await context.newPage();
const pageErrors = [];
page.on("pageerror", (error) => pageErrors.push(error.message));
const apiFailures = [];
page.on("response", (response) => {
  if (response.url().includes("/api/v1/") && response.status() >= 400) {
    apiFailures.push(`${response.status()} ${response.url()}`);
  }
});

const summary = { ok: false };
try {
  step = "opening the overview";
  await page.goto(`${config.url}/`);
  await shows(page, "Backend stats overview");
  // The overview lists every queue (its Queues page shows only the first: a board bug).
  for (const queue of config.queues) {
    step = `finding queue ${queue} on the overview`;
    await shows(page, queue);
  }
  await page.screenshot({ path: `${config.screenshots}.png`, fullPage: true });

  step = `opening the failed tasks of ${config.failed.queue}`;
  // The row of the failed task, read while it shows Failed (a retry may be running right now).
  const failedList = `${config.url}/queues/${config.failed.queue}/Failed`;
  const row = page.locator("tr", { hasText: config.failed.id });
  let cells = [];
  for (let tries = 0; tries < 10 && !cells.some((cell) => cell.trim() === "Failed"); tries++) {
    await opensShowing(page, failedList, config.failed.id);
    cells = await row.locator("td").allInnerTexts();
  }
  summary.failedRow = cells.map((cell) => cell.trim());
  if (!cells.some((cell) => cell.trim() === "Failed")) {
    fail(`the failed task's row has no Failed status: ${JSON.stringify(cells)}`);
  }
  // Columns: task id, attempt, status, run at, context.
  const attempt = Number.parseInt(cells[1] ?? "", 10);
  if (!(attempt >= config.failed.attempt)) {
    fail(`the failed task's row shows attempt ${cells[1]}, expected at least ${config.failed.attempt}: ${JSON.stringify(cells)}`);
  }

  step = "opening the failed task";
  await row.getByRole("link", { name: config.failed.id }).click();
  const taskUrl = `${config.url}/queues/${config.failed.queue}/tasks/${config.failed.id}`;
  await page.waitForURL(taskUrl, { timeout: WAIT_MS });
  await opensShowing(page, taskUrl, "Failed");
  await shows(page, "Attempt:", { partial: true });
  const shown = (await page.innerText("body")).match(/Attempt:\s*(\d+)/);
  summary.taskAttempt = shown ? Number(shown[1]) : null;
  if (!(summary.taskAttempt >= config.failed.attempt)) {
    fail(`the task page shows attempt ${summary.taskAttempt}, expected at least ${config.failed.attempt}`);
  }
  await shows(page, "Result");
  await shows(page, config.failed.error, { partial: true });
  await page.screenshot({ path: `${config.screenshots}-task.png`, fullPage: true });

  step = "opening the workers";
  await page.goto(`${config.url}/workers`);
  for (const queue of config.queues) {
    step = `finding a worker of ${queue}`;
    await shows(page, `${queue}@`, { partial: true });
  }
  for (const worker of config.cronWorkers ?? []) {
    step = `finding the scheduler's ${worker} worker`;
    await shows(page, `${worker}@`, { partial: true });
  }
  await page.screenshot({ path: `${config.screenshots}-workers.png`, fullPage: true });

  step = "checking the page's health";
  if (pageErrors.length > 0) {
    fail(`the board's web app failed: ${pageErrors.join("; ")}`);
  }
  if (apiFailures.length > 0) {
    fail(`board API calls failed: ${apiFailures.join("; ")}`);
  }
  summary.ok = true;
} catch (error) {
  await page.screenshot({ path: `${config.screenshots}-failure.png`, fullPage: true }).catch(() => {});
  const reason = error instanceof Failure ? error.message : error.stack;
  console.error(`board check failed while ${step}: ${reason}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
console.log(JSON.stringify(summary));
