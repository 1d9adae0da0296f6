import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import {
  imageDir,
  launch,
  pageOf,
  pageServer,
  record,
  settled,
  signLink,
  startDemo,
  type Demo,
  type PageServer,
} from './harness.js';

interface Detail {
  /** Which event: `smart-image:load` or `smart-image:error`. */
  event: 'load' | 'error';
  /** The problem type of an error. */
  type?: string;
  key: string;
  url?: string;
  mode?: string;
  fromCache?: boolean;
  expiresAt?: number;
  status?: number;
  attempts: { step: string; mode: string; forced: boolean; ok: boolean }[];
}

let browser: Browser;
let context: BrowserContext;
let page: Page;
const demos: Demo[] = [];
let site: PageServer;

async function demo(options: Parameters<typeof startDemo>[0] = {}): Promise<Demo> {
  const started = await startDemo(options);
  demos.push(started);
  return started;
}

/** The `smart-image:load` and `smart-image:error` events the page has seen. */
function events(): Promise<Detail[]> {
  return page.evaluate(() => (window as unknown as { __events: Detail[] }).__events);
}

beforeAll(async () => {
  browser = await launch();
});
afterAll(async () => {
  await browser?.close();
});

describe('<smart-image> in Chromium against image-url-server', () => {
  // The pages come from the application's own server (another origin, as in most
  // deployments); a fresh browser context (and cache) per test; every server started is
  // stopped.
  beforeEach(async () => {
    site = await pageServer();
  });
  afterEach(async () => {
    await context?.close();
    for (const d of demos.splice(0)) await d.stop();
    await site.close();
  });

  /** Serves `elements` as `path` on the application's site and opens it. */
  async function visit(path: string, elements: string): Promise<void> {
    site.pages.set(path, pageOf('/smart-image.js', elements));
    await page.goto(`${site.origin}${path}`);
  }

  /** The demo's configuration admitting the application's site, plus `more`. */
  const allowSite = (more = '') => `[server]\ncors_origins = ["${site.origin}"]\n${more}`;

  async function open(): Promise<Page> {
    context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    page = await context.newPage();
    await page.addInitScript(() => {
      const w = window as unknown as { __events: unknown[] };
      w.__events = [];
      for (const type of ['load', 'error']) {
        document.addEventListener(`smart-image:${type}`, (e) =>
          w.__events.push({ ...(e as CustomEvent).detail, event: type }),
        );
      }
    });
    return page;
  }

  it('loads a page of 60 images with at most 2 batch requests', async () => {
    const server = await demo({ dir: imageDir(60), config: allowSite() });
    await open();
    const seen = record(page);
    const elements = Array.from(
      { length: 60 },
      (_, i) =>
        `<smart-image key="img-${String(i).padStart(2, '0')}.png" alt="image ${i}" width="40" height="30" api-base="${server.base}"></smart-image>`,
    ).join('');
    await visit('/grid.html', elements);
    await settled(page, 60);
    const details = await events();
    expect(details.filter((d) => d.event === 'load')).toHaveLength(60);
    expect(seen.batches.length).toBeGreaterThanOrEqual(1);
    expect(seen.batches.length).toBeLessThanOrEqual(2);
    // Every image really shows: decoded, with its natural size.
    const widths = await page.$$eval('smart-image', (all) =>
      all.map((el) => (el.shadowRoot?.querySelector('img') as HTMLImageElement).naturalWidth),
    );
    expect(widths.every((w) => w === 240)).toBe(true);
    expect(new Set(details.map((d) => d.mode))).toEqual(new Set(['direct']));
  });

  it('resolves an expired URL again before using it, and never loads one expired', async () => {
    const server = await demo({ config: allowSite('[signing]\nttl_secs = 4\npre_refresh_secs = 1\nalign_secs = 0\n') });
    await open();
    const seen = record(page);
    await visit(
      '/expiry.html',
      `<smart-image key="samples/sample-01.png" alt="one" width="240" height="180" api-base="${server.base}"></smart-image>`,
    );
    await settled(page, 1, ['loaded']);
    const [first] = await events();
    expect(first?.event).toBe('load');
    // Wait (on the page's clock) until the URL shown has expired, then show it again.
    await page.waitForFunction((at) => Date.now() > at + 500, first?.expiresAt ?? 0, { timeout: 15_000 });
    await page.evaluate(() => document.querySelector('smart-image')?.reload());
    await page.waitForFunction(() => (window as unknown as { __events: unknown[] }).__events.length === 2);
    const [, second] = await events();
    expect(second).toMatchObject({ event: 'load', mode: 'direct' });
    expect(second?.url).not.toBe(first?.url);
    expect(second?.expiresAt ?? 0).toBeGreaterThan(Date.now());
    expect(seen.batches).toHaveLength(2);
    // Every image request went out before its URL's q-sign-time ended.
    const direct = seen.images.filter((i) => i.url.includes('q-sign-time='));
    expect(direct).toHaveLength(2);
    for (const image of direct) {
      const end = Number(decodeURIComponent(new URL(image.url).searchParams.get('q-sign-time') ?? '').split(';')[1]);
      expect(end * 1000).toBeGreaterThan(image.at);
    }
  });

  it('falls back to proxy mode when the origin refuses the browser', async () => {
    const server = await demo({ config: allowSite() });
    await open();
    const seen = record(page);
    const refused = await fetch(`${server.base}/demo/api/origin?refuse_browsers=true`, { method: 'POST' });
    expect(refused.status).toBe(204);
    await visit(
      '/proxy.html',
      `<smart-image key="samples/sample-02.png" alt="two" width="240" height="180" retries="1" retry-delay="50" api-base="${server.base}"></smart-image>`,
    );
    await settled(page, 1, ['loaded']);
    const [loaded] = await events();
    expect(loaded).toMatchObject({ event: 'load', mode: 'proxy' });
    expect(loaded?.attempts.map((a) => `${a.mode}${a.forced ? '+force' : ''}:${a.ok}`)).toEqual([
      'direct:false',
      'direct+force:false',
      'direct:false',
      'proxy:true',
    ]);
    expect(await page.getAttribute('smart-image', 'mode')).toBe('proxy');
    // One batch, one forced batch, one retry from the resolver's cache.
    expect(seen.batches).toHaveLength(2);
    expect(seen.batches[1]).toContain('force=true');
    const natural = await page.$eval('smart-image', (el) => (el.shadowRoot?.querySelector('img') as HTMLImageElement).naturalWidth);
    expect(natural).toBe(240);
  });

  it('shows the error state, with the alt text and a retry, when the server is down', async () => {
    const server = await demo();
    const base = server.base;
    await server.stop();
    await open();
    await visit(
      '/down.html',
      `<smart-image key="samples/sample-03.png" alt="A sample" width="240" height="180" api-base="${base}" retries="1" retry-delay="20"></smart-image>`,
    );
    await settled(page, 1, ['error']);
    const [failed] = await events();
    expect(failed?.event).toBe('error');
    expect(failed?.attempts.at(-1)).toMatchObject({ mode: 'proxy', ok: false });
    const error = page.locator('smart-image').locator('[part=error]');
    expect(await error.getAttribute('role')).toBe('img');
    expect(await error.getAttribute('aria-label')).toBe('A sample');
    expect(await error.textContent()).toContain('A sample');
    await expect(page.getByRole('img', { name: 'A sample' }).isVisible()).resolves.toBe(true);
    expect(await page.getByRole('button', { name: 'Retry' }).isVisible()).toBe(true);
    // The box keeps its size: no layout shift between placeholder, image and error.
    const box = await page.locator('smart-image').boundingBox();
    expect(box).toMatchObject({ width: 240, height: 180 });
  });

  it('works from a listed origin through CORS; elsewhere only proxy mode is left', async () => {
    const server = await demo({ config: allowSite() });
    await open();
    const seen = record(page);
    const corsHeaders: (string | undefined)[] = [];
    page.on('response', (r) => {
      if (r.url().includes('/batch/urls') && r.request().method() === 'POST') {
        corsHeaders.push(r.headers()['access-control-allow-origin']);
      }
    });
    const element = `<smart-image key="samples/sample-04.png" alt="four" width="240" height="180" retries="0" api-base="${server.base}"></smart-image>`;
    // The module itself comes from the image-url server, cross-origin too.
    site.pages.set('/cors.html', pageOf(`${server.base}/static/smart-image.js`, element));
    await page.goto(`${site.origin}/cors.html`);
    await settled(page, 1, ['loaded']);
    expect((await events())[0]).toMatchObject({ event: 'load', mode: 'direct' });
    expect(seen.batches).toHaveLength(1);
    expect(corsHeaders).toEqual([site.origin]);

    // The same page on an origin that is not listed: the browser keeps the batch answer
    // from it, and the element falls back to proxy mode (an <img> needs no CORS).
    const other = await pageServer();
    try {
      other.pages.set('/cors.html', pageOf('/smart-image.js', element));
      await page.goto(`${other.origin}/cors.html`);
      await settled(page, 1, ['loaded']);
      const [loaded] = await events();
      expect(loaded).toMatchObject({ event: 'load', mode: 'proxy' });
      expect(loaded?.attempts.filter((a) => a.step === 'resolve')).toHaveLength(2);
    } finally {
      await other.close();
    }
  });

  it('sends signed links, and a key without one is refused', async () => {
    const secret = 'e2e-link-secret-0123456789';
    const server = await demo({ config: allowSite(`[access]\nlink_secrets = ["${secret}"]\n`) });
    await open();
    const { exp, sig } = signLink('samples/sample-05.png', secret);
    await visit(
      '/links.html',
      `<smart-image key="samples/sample-05.png" alt="five" width="240" height="180" exp="${exp}" sig="${sig}" api-base="${server.base}"></smart-image>
       <smart-image key="samples/sample-06.png" alt="six" width="240" height="180" api-base="${server.base}"></smart-image>`,
    );
    await settled(page, 2);
    const details = await events();
    const five = details.find((d) => d.key === 'samples/sample-05.png');
    const six = details.find((d) => d.key === 'samples/sample-06.png');
    expect(five).toMatchObject({ event: 'load', mode: 'direct' });
    // Refused for good: no new URL, no proxy mode.
    expect(six?.event).toBe('error');
    expect([401, 403]).toContain(six?.status);
    expect(six?.attempts).toHaveLength(1);
  });

  it('resolves srcset widths, thumbnails and a blurred placeholder in the same window', async () => {
    const server = await demo({ config: allowSite() });
    await open();
    const seen = record(page);
    await visit(
      '/srcset.html',
      `<smart-image key="samples/sample-07.png" alt="seven" width="240" height="180" sizes="240px"
         srcset-widths="120 240" placeholder="blur" api-base="${server.base}"></smart-image>
       <smart-image key="samples/sample-08.png" alt="eight" width="120" height="90" thumbnail="120"
         api-base="${server.base}"></smart-image>`,
    );
    await settled(page, 2, ['loaded']);
    const srcset = await page.$eval('smart-image', (el) => el.shadowRoot?.querySelector('img')?.getAttribute('srcset') ?? '');
    const candidates = srcset.split(', ');
    expect(candidates).toHaveLength(2);
    expect(candidates[0]).toMatch(/imageMogr2%2Fthumbnail%2F120x.* 120w$/);
    expect(candidates[1]).toMatch(/imageMogr2%2Fthumbnail%2F240x.* 240w$/);
    // One request per set of options: plain, 120 px (the srcset candidate and the
    // thumbnail element share it), 240 px, and the 24 px placeholder.
    const queries = seen.batches.map((url) => new URL(url).searchParams.get('process') ?? '').sort();
    expect(queries).toEqual([
      '',
      'imageMogr2/thumbnail/120x',
      'imageMogr2/thumbnail/240x',
      'imageMogr2/thumbnail/24x',
    ]);
    const placeholder = await page.$eval(
      'smart-image',
      (el) => (el.shadowRoot?.querySelector('[part=placeholder]') as HTMLElement).style.cssText,
    );
    expect(placeholder).toContain('blur(10px)');
    expect(placeholder).toContain('thumbnail%2F24x');
  });

  it('runs the demo page, expires a URL, breaks the origin, and takes the docs screenshot', async () => {
    const server = await demo();
    await open();
    await page.goto(`${server.base}/demo`);
    await page.waitForFunction(() => document.querySelectorAll('figure[data-mode=direct]').length === 8, null, {
      timeout: 30_000,
    });
    const shots = resolve(import.meta.dirname, '../../docs/images');
    mkdirSync(shots, { recursive: true });
    await page.screenshot({ path: join(shots, 'demo.png'), fullPage: true });

    // Expire one URL: the card shows a URL signed just now.
    const first = page.locator('figure').first();
    const before = await first.getAttribute('data-expires-at');
    await first.getByRole('button', { name: 'Expire URL' }).click();
    await page.waitForFunction(
      (before) => document.querySelector('figure')?.getAttribute('data-expires-at') !== before,
      before,
    );
    expect(await first.locator('.meta').textContent()).toContain('cached URL');

    // Break the origin: every card ends in proxy mode.
    await page.getByRole('button', { name: 'Break the origin' }).click();
    await page.waitForFunction(() => document.querySelectorAll('figure[data-mode=proxy]').length === 8, null, {
      timeout: 30_000,
    });
    expect(await page.locator('#origin-state').textContent()).toContain('refusing');
  });
});
