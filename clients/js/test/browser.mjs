// One client in headless Chromium for tests/tests/js_client.rs: serves a page on loopback that
// loads dist/herald.mjs and harness.mjs, opens it in Chromium (puppeteer-core; Debian's
// /usr/bin/chromium unless CHROMIUM names another), and relays: commands as JSON lines on stdin
// into the page, the page's events as JSON lines on stdout. Options as for node.mjs.
import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import { createInterface } from "node:readline";
import puppeteer from "puppeteer-core";

const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const opts = JSON.parse(process.argv[2]);
const root = new URL("../", import.meta.url);
const PAGE = `<!doctype html><meta charset="utf-8"><link rel="icon" href="data:,"><title>herald client test</title>
<script type="module">
import * as Herald from "/dist/herald.mjs";
import { drive } from "/test/harness.mjs";
let run;
window.start = (opts) => { run = drive(Herald, opts, (o) => window.report(o)); };
window.command = (c) => run(c);
window.loaded = true;
</script>`;
const server = createServer(async (req, res) => {
  const path = new URL(req.url, "http://x").pathname;
  if (path === "/") return res.writeHead(200, { "content-type": "text/html" }).end(PAGE);
  if (!/^\/(dist\/herald\.mjs|test\/harness\.mjs)$/.test(path)) return res.writeHead(404).end();
  res.writeHead(200, { "content-type": "text/javascript" }).end(await readFile(new URL("." + path, root)));
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const page = await browser.newPage();
page.on("pageerror", (e) => out({ event: "page_error", message: String(e) }));
page.on("console", (m) => m.type() === "error" && out({ event: "console_error", text: m.text() }));
await page.exposeFunction("report", out);
await page.goto(`http://127.0.0.1:${server.address().port}/`);
await page.waitForFunction("window.loaded === true");
await page.evaluate((o) => window.start(o), opts);
out({ event: "ready", browser: await browser.version() });
const rl = createInterface({ input: process.stdin });
rl.on("line", (l) => l.trim() && page.evaluate((c) => window.command(c), JSON.parse(l)));
rl.on("close", async () => {
  await browser.close();
  process.exit(0);
});
