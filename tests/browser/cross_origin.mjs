// Opens a page (argument 1) in headless Chromium and prints, as JSON, what the page reported in
// `window.results`: the relay's end-to-end tests use it to see the relay as a browser on another
// origin does. playwright-core comes from the UI's packages (the test command installs them).
import { createRequire } from "node:module";

const require = createRequire(new URL("../../ui/package.json", import.meta.url));
const { chromium } = require("playwright-core");

const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
try {
  const page = await browser.newPage();
  await page.goto(process.argv[2]);
  const results = await page.waitForFunction(() => window.results, null, { timeout: 20000 });
  console.log(JSON.stringify(await results.jsonValue()));
} finally {
  await browser.close();
}
