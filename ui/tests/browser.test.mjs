// Browser tests of the built UI (ui/dist) in real headless Chromium, Tauri's IPC mocked at the
// boundary (tests/harness.js): sign-in, list, filter, search, acknowledge, offline and gap banners,
// settings, and a clicked OS alert opening its notification.
// Screenshots go to ui/test-output/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

const ui = path.resolve(import.meta.dirname, "..");
const out = path.join(ui, "test-output");
const types = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css" };
let server, browser, base;

function file(res, p) {
  if (!fs.existsSync(p)) { res.writeHead(404).end(); return; }
  res.writeHead(200, { "content-type": types[path.extname(p)] ?? "application/octet-stream" }).end(fs.readFileSync(p));
}

before(async () => {
  fs.mkdirSync(out, { recursive: true });
  server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    if (url.pathname === "/" || url.pathname === "/index.html") {
      // The built page, with the IPC mock loaded before the app's module.
      const html = fs.readFileSync(path.join(ui, "dist/index.html"), "utf8")
        .replace("<script type=\"module\"", "<script type=\"module\" src=\"/harness.js\"></script><script type=\"module\"");
      res.writeHead(200, { "content-type": "text/html" }).end(html);
    } else if (url.pathname === "/harness.js") file(res, path.join(ui, "tests/harness.js"));
    else if (url.pathname.startsWith("/tauri-api/")) file(res, path.join(ui, "node_modules/@tauri-apps/api", url.pathname.slice(11)));
    else file(res, path.join(ui, "dist", url.pathname));
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  base = `http://127.0.0.1:${server.address().port}/`;
  browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  server?.close();
});

async function open() {
  const page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
  page.on("pageerror", (e) => { throw e; });
  await page.goto(base);
  return page;
}

test("first run is a sign-in screen; a refused token says why; a good one opens the inbox", async () => {
  const page = await open();
  await page.locator("#signin").waitFor();
  assert.equal(await page.locator("#inbox").isHidden(), true);
  await page.fill("#server", "http://relay.test:8851");
  await page.fill("#user", "d1");
  await page.fill("#token", "forged");
  await page.click("#signin button[type=submit]");
  await page.locator("#signin-error", { hasText: "bad signature" }).waitFor();
  await page.fill("#token", "good-token");
  await page.click("#signin button[type=submit]");
  await page.locator("#list li").first().waitFor();
  await page.screenshot({ path: path.join(out, "inbox.png") });
  const titles = await page.locator("#list li .title").allTextContents();
  assert.match(titles[0], /Critical lab result — BMP for Bob Wilson/, "the unacknowledged critical result is pinned on top");
  assert.equal(titles.length, 3);
  const calls = await page.evaluate(() => window.__wardline.state.calls.filter(([c]) => c === "sign_in").map(([, a]) => a));
  assert.deepEqual(calls.at(-1), { server: "http://relay.test:8851", user: "d1", token: "good-token" });
  assert.match(await page.locator("#banner").textContent(), /1 critical result waiting/);
  await page.close();
});

async function signedIn() {
  const page = await open();
  await page.evaluate(() => sessionStorage.setItem("signed-in", "yes"));
  await page.reload();
  await page.locator("#list li").first().waitFor();
  return page;
}

test("filters and search narrow the list", async () => {
  const page = await signedIn();
  await page.check("#f-critical");
  await page.waitForFunction(() => document.querySelectorAll("#list li").length === 1);
  await page.uncheck("#f-critical");
  await page.selectOption("#f-type", "lab_result_available");
  await page.waitForFunction(() => document.querySelectorAll("#list li").length === 1);
  assert.match(await page.locator("#list li .title").first().textContent(), /Lab result available — CBC/);
  await page.selectOption("#f-type", "");
  await page.fill("#f-search", "alice");
  await page.waitForFunction(() => document.querySelectorAll("#list li").length === 1);
  assert.match(await page.locator("#list li .title").first().textContent(), /Alice Johnson/);
  await page.close();
});

test("acknowledging a critical result from the detail view", async () => {
  const page = await signedIn();
  await page.locator("#list li").first().click();
  await page.locator("#detail dd", { hasText: "Bob Wilson" }).waitFor();
  assert.equal(await page.locator("#detail dt").first().textContent(), "Patient");
  await page.screenshot({ path: path.join(out, "detail.png") });
  await page.click("#detail button.primary");
  await page.locator("#detail button.primary", { hasText: "Acknowledged" }).waitFor();
  const acks = await page.evaluate(() => window.__wardline.state.calls.filter(([c]) => c === "acknowledge").map(([, a]) => a.ids));
  assert.deepEqual(acks, [["doctor:d1:notifications/1795400000001-0"]]);
  assert.equal(await page.locator("#banner").textContent(), "Connected");
  await page.close();
});

test("the detail view shows the trail from the relay and declines a critical result", async () => {
  const page = await signedIn();
  await page.locator("#list li").first().click();
  await page.locator("#trail li", { hasText: "Escalated (to doctor:dr-backup:notifications (1795400000009-0))" }).waitFor();
  const lines = await page.locator("#trail li").allTextContents();
  assert.equal(lines.length, 4);
  assert.match(lines[1], /^\d\d:\d\d:\d\d Delivered by d1$/);
  assert.equal(await page.locator("#trail .meta").textContent(), "Waiting for acknowledgement.");
  await page.screenshot({ path: path.join(out, "trail.png") });
  await page.click("#decline");
  await page.locator("#decline", { hasText: "Declined: passed to the backup" }).waitFor();
  const declines = await page.evaluate(() => window.__wardline.state.calls.filter(([c]) => c === "decline").map(([, a]) => a.ids));
  assert.deepEqual(declines, [["doctor:d1:notifications/1795400000001-0"]]);
  // Offline, the trail says why it is not there.
  await page.evaluate(() => { window.__wardline.state.trailError = "the relay is unreachable (connection refused)"; });
  await page.locator("#list li").nth(1).click();
  await page.locator("#trail .meta", { hasText: "Trail unavailable: the relay is unreachable (connection refused)" }).waitFor();
  await page.close();
});

test("an acknowledgement that fails says so and leaves the result waiting", async () => {
  const page = await signedIn();
  await page.evaluate(() => { window.__wardline.state.acknowledgeError = "the inbox is locked by another process"; });
  await page.locator("#list li").first().click();
  await page.click("#detail button.primary");
  await page.locator("#detail [role=alert]", { hasText: "Not acknowledged: the inbox is locked by another process" }).waitFor();
  assert.equal(await page.locator("#detail button.primary").textContent(), "Acknowledge");
  await page.close();
});

test("the banner tells the truth: offline with the retry time, then a history gap", async () => {
  const page = await signedIn();
  const since = await page.evaluate(() => new Date(2026, 10, 23, 10, 42).getTime());
  await page.evaluate((since) => window.__wardline.emit({ event: "reconnecting", in_ms: 8000, reason: "connection lost", offline_since: since }), since);
  await page.locator("#banner", { hasText: "Offline since 10:42 — retrying in 8 s" }).waitFor();
  await page.screenshot({ path: path.join(out, "offline.png") });
  await page.evaluate(() => {
    window.__wardline.state.gaps.push({ channel: "doctor:d1:notifications", since: "1-0", detected_at: Date.now() });
    return window.__wardline.emit({ event: "gap_detected", channel: "doctor:d1:notifications", since: "1-0" });
  });
  await page.locator("#banner", { hasText: "History gap on doctor:d1:notifications — some notifications may be missing" }).waitFor();
  await page.screenshot({ path: path.join(out, "gap.png") });
  await page.close();
});

test("settings: quiet hours and sound are saved, a pause shows until when, start at login says why it failed", async () => {
  const page = await signedIn();
  await page.click("#open-settings");
  await page.locator("#settings").waitFor();
  assert.equal(await page.locator("#inbox").isHidden(), true);
  assert.equal(await page.locator("#s-user").textContent(), "d1");
  await page.check("#s-quiet");
  await page.fill("#s-quiet-start", "21:30");
  await page.fill("#s-quiet-end", "06:45");
  await page.uncheck("#s-sound");
  assert.equal(await page.locator("#s-details").isChecked(), false, "alerts hide details unless asked");
  await page.check("#s-details");
  await page.click("#s-save");
  await page.locator("#s-saved", { hasText: "Saved." }).waitFor();
  assert.deepEqual(await page.evaluate(() => window.__wardline.state.alerts),
    { quiet_hours: "21:30-06:45", sound: false, paused_until: null, show_details: true });
  await page.click("#s-pause-hour");
  await page.locator("#s-pause-state", { hasText: "Non-critical alerts paused until" }).waitFor();
  assert.match(await page.locator("#banner").textContent(), /non-critical alerts paused until \d\d:\d\d/);
  assert.equal(await page.locator("#s-resume").isEnabled(), true);
  await page.screenshot({ path: path.join(out, "settings.png") });
  await page.click("#s-resume");
  await page.locator("#s-pause-state", { hasText: "Non-critical alerts are on." }).waitFor();
  await page.check("#s-autostart");
  await page.waitForFunction(() => window.__wardline.state.startAtLogin === true);
  await page.evaluate(() => { window.__wardline.state.autostartError = "~/.config/autostart: permission denied"; });
  await page.click("#s-autostart");
  await page.locator("#settings-error", { hasText: "Start at login: ~/.config/autostart: permission denied" }).waitFor();
  assert.equal(await page.locator("#s-autostart").isChecked(), true, "the box shows what is really set");
  await page.click("#close-settings");
  await page.locator("#inbox").waitFor();
  await page.close();
});

test("a clicked OS alert opens the window on its notification, filters cleared", async () => {
  const page = await signedIn();
  await page.check("#f-critical");
  await page.waitForFunction(() => document.querySelectorAll("#list li").length === 1);
  await page.evaluate(() => window.__wardline.emit({
    event: "alert_opened", channel: "doctor:d1:notifications", id: "1795400000000-0",
  }));
  await page.locator("#detail dd", { hasText: "Alice Johnson" }).waitFor();
  assert.equal(await page.locator("#list li").count(), 3);
  assert.equal(await page.locator("#f-critical").isChecked(), false);
  assert.equal(await page.evaluate(() => document.activeElement?.dataset.key), "doctor:d1:notifications/1795400000000-0");
  await page.close();
});

test("signing out from the tray brings back the sign-in screen", async () => {
  const page = await signedIn();
  await page.evaluate(() => {
    window.__wardline.state.signedIn = false;
    return window.__wardline.emit({ event: "signed_out" });
  });
  await page.locator("#signin").waitFor();
  assert.equal(await page.locator("#inbox").isHidden(), true);
  assert.equal(await page.locator("#banner").textContent(), "Not signed in");
  await page.close();
});

test("a burst of stored notifications refreshes the window a few times, not once each", async () => {
  const page = await signedIn();
  const before = await page.evaluate(() => window.__wardline.state.calls.filter(([c]) => c === "inbox").length);
  await page.evaluate(async () => {
    const stored = { event: "notification_stored", notification: window.__wardline.state.rows[0] };
    await Promise.all(Array.from({ length: 50 }, () => window.__wardline.emit(stored)));
  });
  await page.waitForFunction((before) => window.__wardline.state.calls.filter(([c]) => c === "inbox").length > before, before);
  // Then time for any further refreshes to show (without coalescing, all 50 land well within it).
  await page.waitForTimeout(300);
  const refreshes = await page.evaluate(() => window.__wardline.state.calls.filter(([c]) => c === "inbox").length) - before;
  assert.ok(refreshes >= 1 && refreshes <= 5, `${refreshes} refreshes for 50 events`);
  await page.close();
});
