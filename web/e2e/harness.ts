/**
 * What the end-to-end tests share: the server binary (`image-url-server demo`, started on
 * a free port and read back from its own "open http://…" line), Debian's Chromium through
 * playwright-core, and pages served to the browser by Playwright's routing.
 */

import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { chromium, type Browser, type Page } from 'playwright-core';

const ROOT = resolve(import.meta.dirname, '../..');
/** The server binary: `cargo build -p image-url-server` makes it. */
export const SERVER_BIN = process.env.E2E_SERVER_BIN ?? join(ROOT, 'target/debug/image-url-server');
/** The built element (what the server embeds). */
export const MODULE = readFileSync(join(ROOT, 'web/dist/smart-image.js'), 'utf8');
/** The demo's sample images. */
export const SAMPLES = join(ROOT, 'bins/server/demo/images');

/** A running `image-url-server demo`. */
export interface Demo {
  /** `http://127.0.0.1:PORT`. */
  base: string;
  process: ChildProcess;
  /** Everything it logged. */
  log: string[];
  stop(): Promise<void>;
}

/** Starts `image-url-server demo` with an optional directory and TOML configuration. */
export async function startDemo(options: { dir?: string; config?: string } = {}): Promise<Demo> {
  const args = ['demo', '--listen', '127.0.0.1:0'];
  if (options.dir) args.push('--dir', options.dir);
  if (options.config) {
    const file = join(mkdtempSync(join(tmpdir(), 'image-url-e2e-')), 'config.toml');
    writeFileSync(file, options.config);
    args.push('--config', file);
  }
  // The server reads IMAGE_URL_* and COS_* as configuration: none of the test runner's.
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([name]) => !/^(IMAGE_URL_|COS_|TENCENTCLOUD_)/.test(name)),
  );
  const child = spawn(SERVER_BIN, args, {
    env: { ...env, RUST_LOG: 'warn,image_url_server=info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const log: string[] = [];
  child.stderr?.on('data', (chunk: Buffer) => log.push(chunk.toString()));
  const base = await new Promise<string>((ok, fail) => {
    let out = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      const found = /open (http:\/\/[^/\s]+)\/demo/.exec(out);
      if (found?.[1]) ok(found[1]);
    });
    child.on('exit', (code) => fail(new Error(`the demo exited (${code}) before listening:\n${log.join('')}`)));
  });
  const exited = new Promise<void>((ok) => child.on('exit', () => ok()));
  return {
    base,
    process: child,
    log,
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

/** A directory of `count` images named `img-00.png`…, copied from the samples. */
export function imageDir(count: number): string {
  const dir = mkdtempSync(join(tmpdir(), 'image-url-e2e-images-'));
  for (let i = 0; i < count; i++) {
    const sample = `sample-0${(i % 8) + 1}.png`;
    copyFileSync(join(SAMPLES, sample), join(dir, `img-${String(i).padStart(2, '0')}.png`));
  }
  return dir;
}

/** Debian's Chromium, headless, kept off the network beyond what the tests ask. */
export function launch(): Promise<Browser> {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_BIN ?? '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/** The web application's own server: pages the tests write, and the element's module at
 * `/smart-image.js`, on its own origin (`http://127.0.0.1:PORT`), as a real site would
 * serve them beside an image-url server elsewhere. */
export interface PageServer {
  origin: string;
  pages: Map<string, string>;
  close(): Promise<void>;
}

/** Starts a {@link PageServer} on a free loopback port. */
export async function pageServer(): Promise<PageServer> {
  const pages = new Map<string, string>();
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    if (path === '/smart-image.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' }).end(MODULE);
      return;
    }
    const page = pages.get(path);
    if (page === undefined) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(page);
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const { port } = server.address() as AddressInfo;
  return {
    origin: `http://127.0.0.1:${port}`,
    pages,
    close: () => new Promise<void>((ok) => server.close(() => ok())),
  };
}

/** A page of `<smart-image>` elements with the module from `moduleSrc`. */
export function pageOf(moduleSrc: string, elements: string): string {
  return `<!doctype html><html><head><meta charset="utf-8"><script type="module" src="${moduleSrc}"></script>
<style>body{margin:0;display:flex;flex-wrap:wrap;gap:4px}</style></head><body>${elements}</body></html>`;
}

/** Records the batch requests and image requests a page makes. */
export function record(page: Page) {
  const batches: string[] = [];
  const images: { url: string; at: number }[] = [];
  page.on('request', (request) => {
    const url = request.url();
    if (url.includes('/api/v1/images/batch/urls')) {
      if (request.method() === 'POST') batches.push(url);
    } else if (request.resourceType() === 'image') {
      images.push({ url, at: Date.now() });
    }
  });
  return { batches, images };
}

/** Waits until every `<smart-image>` on the page is in one of `states`. */
export async function settled(page: Page, count: number, states = ['loaded', 'error']): Promise<void> {
  await page.waitForFunction(
    ({ count, states }) => {
      const all = [...document.querySelectorAll('smart-image')];
      return all.length === count && all.every((el) => states.includes(el.getAttribute('state') ?? ''));
    },
    { count, states },
    { timeout: 30_000 },
  );
}

/** `image-url-server sign-link`: the `exp` and `sig` of a link for `key`. */
export function signLink(key: string, secret: string, expires = 600): { exp: string; sig: string } {
  const out = execFileSync(SERVER_BIN, ['sign-link', key, '--secret', secret, '--expires', String(expires)], {
    encoding: 'utf8',
  });
  const query = new URLSearchParams(out.trim().split('?')[1] ?? '');
  return { exp: query.get('exp') ?? '', sig: query.get('sig') ?? '' };
}
