// Opens a page in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core),
// waits, and reports what it rendered, as one JSON line on stdout:
//   node scripts/browser-check.mjs map URL SCREENSHOT.png [WAIT_MS]
//     the live map: #stats of the page and the canvas' coloured pixels, twice WAIT_MS apart
//     (moving vehicles change the picture), and a screenshot of the second state.
//   node scripts/browser-check.mjs report FILE.html SCREENSHOT.png
//     the load-test report: every <canvas class="plot"> and how many of its pixels are drawn.
// Installed and located by scripts/lib.sh need_browser (FLEET_PLAYWRIGHT_DIR, FLEET_CHROMIUM).
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(import.meta.url);
const dir = process.env.FLEET_PLAYWRIGHT_DIR;
if (!dir) {
  console.error("FLEET_PLAYWRIGHT_DIR is not set: run through scripts/lib.sh need_browser");
  process.exit(2);
}
const { chromium } = require(path.join(dir, "node_modules", "playwright-core"));
const [mode, target, shot, waitArg] = process.argv.slice(2);
const wait = Number(waitArg || 3000);

const browser = await chromium.launch({
  executablePath: process.env.FLEET_CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  const url = mode === "report" ? "file://" + path.resolve(target) : target;
  await page.goto(url, { waitUntil: "load" });
  if (mode === "map") {
    const sample = async () => page.evaluate(() => {
      const c = document.getElementById("c");
      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      const colours = { moving: [0x3d, 0xdc, 0x84], idle: [0xf5, 0xb9, 0x42], alert: [0xff, 0x4d, 0x4d], offline: [0x6b, 0x77, 0x85] };
      const counts = { moving: 0, idle: 0, alert: 0, offline: 0 };
      let hash = 0;
      for (let i = 0; i < d.length; i += 4) {
        for (const [k, [r, g, b]] of Object.entries(colours)) {
          if (Math.abs(d[i] - r) < 8 && Math.abs(d[i + 1] - g) < 8 && Math.abs(d[i + 2] - b) < 8) {
            counts[k]++;
            hash = (hash * 31 + i) >>> 0;
          }
        }
      }
      return { stats: JSON.parse(document.getElementById("stats").textContent), pixels: counts, hash,
        status: document.getElementById("status").textContent, alerts: document.querySelectorAll("#alerts li").length };
    });
    await page.waitForTimeout(wait);
    const first = await sample();
    await page.waitForTimeout(wait);
    const second = await sample();
    await page.screenshot({ path: shot });
    console.log(JSON.stringify({ first, second, errors }));
  } else {
    await page.waitForTimeout(500);
    const plots = await page.evaluate(() => [...document.querySelectorAll("canvas.plot")].map((c) => {
      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      let drawn = 0;
      for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250)) drawn++;
      return { id: c.id, width: c.width, height: c.height, drawn };
    }));
    await page.screenshot({ path: shot, fullPage: true });
    console.log(JSON.stringify({ plots, errors }));
  }
} finally {
  await browser.close();
}
