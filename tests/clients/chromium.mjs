// Headless Chromium driven over the DevTools protocol (with the `ws` package, nothing else):
// loads a page and prints, as JSON lines on stdout, every console.log of the page that is a
// JSON object (pages report their events that way), its uncaught errors, and what the browser
// says before it starts.
//
// Options (one JSON argument): url (the page), chromium (default /usr/bin/chromium, or
// $CHROMIUM). Commands on stdin: {"end": true}.
// Events: ready (the page is loading), page_error, console (a console line that is not JSON),
// and the page's own events.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import WebSocket from 'ws';

const opts = JSON.parse(process.argv[2] ?? '{}');
const out = (event, fields = {}) => process.stdout.write(JSON.stringify({ event, ...fields }) + '\n');

const bin = opts.chromium ?? process.env.CHROMIUM ?? '/usr/bin/chromium';
if (!fs.existsSync(bin)) {
  out('fatal', { message: `chromium not found at ${bin} (apt-get install chromium)` });
  process.exit(1);
}
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-chromium-'));
const browser = spawn(bin, [
  '--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
  '--no-first-run', '--no-default-browser-check', '--remote-debugging-port=0',
  `--user-data-dir=${profile}`, 'about:blank',
], { stdio: ['ignore', 'ignore', 'pipe'] });

let quitting = false;
const quit = (code) => {
  browser.kill('SIGKILL');
  fs.rmSync(profile, { recursive: true, force: true });
  process.exit(code);
};
browser.on('exit', (code) => {
  if (!quitting) out('browser_exit', { code });
  quit(quitting ? 0 : 1);
});
// Browser.close ends Chromium and its helper processes; a kill is the fallback.
const end = async () => {
  quitting = true;
  setTimeout(() => quit(0), 5000);
  try { await call('Browser.close'); } catch { /* already gone */ }
};

const endpoint = await new Promise((resolve) => {
  readline.createInterface({ input: browser.stderr }).on('line', (line) => {
    const m = line.match(/DevTools listening on (ws:\/\/\S+)/);
    if (m) resolve(m[1]);
  });
});

const cdp = new WebSocket(endpoint, { perMessageDeflate: false });
await new Promise((resolve, reject) => { cdp.once('open', resolve); cdp.once('error', reject); });
let nextId = 1;
const pending = new Map();
const call = (method, params = {}, sessionId) => new Promise((resolve, reject) => {
  const id = nextId++;
  pending.set(id, { resolve, reject });
  cdp.send(JSON.stringify({ id, method, params, sessionId }));
});
cdp.on('message', (data) => {
  const msg = JSON.parse(data.toString());
  if (msg.id && pending.has(msg.id)) {
    const p = pending.get(msg.id);
    pending.delete(msg.id);
    if (msg.error) p.reject(new Error(msg.error.message)); else p.resolve(msg.result);
    return;
  }
  if (msg.method === 'Runtime.consoleAPICalled') {
    const args = msg.params.args.map((a) => a.value ?? a.description ?? '');
    const text = args.join(' ');
    try {
      const v = JSON.parse(text);
      if (v && typeof v === 'object' && v.event) {
        process.stdout.write(JSON.stringify(v) + '\n');
        return;
      }
    } catch { /* not JSON */ }
    out('console', { text });
  } else if (msg.method === 'Runtime.exceptionThrown') {
    out('page_error', { text: msg.params.exceptionDetails?.exception?.description ?? msg.params.exceptionDetails?.text });
  }
});

const { targetId } = await call('Target.createTarget', { url: 'about:blank' });
const { sessionId } = await call('Target.attachToTarget', { targetId, flatten: true });
await call('Runtime.enable', {}, sessionId);
await call('Page.enable', {}, sessionId);
await call('Page.navigate', { url: opts.url }, sessionId);
out('ready');

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const cmd = JSON.parse(line);
  if (cmd.end) end();
});
process.stdin.on('end', () => end());
