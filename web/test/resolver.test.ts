import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ResolveError, UrlResolver } from '../src/resolver.js';
import { fakeServer } from './helpers.js';

beforeEach(() => {
  vi.useFakeTimers();
  vi.setSystemTime(new Date('2026-11-28T08:00:00Z'));
});
afterEach(() => vi.useRealTimers());

function resolver(fetch: typeof globalThis.fetch, options = {}) {
  return new UrlResolver({ apiBase: 'https://api.example/', fetch, ...options });
}

describe('batching', () => {
  it('sends the keys asked for within the window in one request, later ones in the next', async () => {
    const server = fakeServer();
    const r = resolver(server.fetch);
    const first = [r.resolve({ key: 'a.jpg' }), r.resolve({ key: 'b.jpg' })];
    await vi.advanceTimersByTimeAsync(5);
    first.push(r.resolve({ key: 'c.jpg' }));
    expect(server.received).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(5);
    await Promise.all(first);
    expect(server.received).toHaveLength(1);
    expect(server.received[0]?.url).toBe('https://api.example/api/v1/images/batch/urls');
    expect(server.received[0]?.keys).toEqual(['a.jpg', 'b.jpg', 'c.jpg']);

    const late = r.resolve({ key: 'd.jpg' });
    await vi.advanceTimersByTimeAsync(10);
    await late;
    expect(server.received).toHaveLength(2);
    expect(server.received[1]?.keys).toEqual(['d.jpg']);
  });

  it('asks for a key once however many elements want it', async () => {
    const server = fakeServer();
    const r = resolver(server.fetch);
    const answers = Promise.all([1, 2, 3].map(() => r.resolve({ key: 'same.jpg' })));
    await vi.advanceTimersByTimeAsync(10);
    const [a, b, c] = await answers;
    expect(server.received.map((x) => x.keys)).toEqual([['same.jpg']]);
    expect(a?.url).toBe(b?.url);
    expect(b?.url).toBe(c?.url);
  });

  it('splits more than 100 keys into requests of at most 100', async () => {
    const server = fakeServer();
    const r = resolver(server.fetch);
    const all = Promise.all(Array.from({ length: 250 }, (_, i) => r.resolve({ key: `k${i}.jpg` })));
    await vi.advanceTimersByTimeAsync(10);
    await all;
    expect(server.received.map((x) => x.keys.length)).toEqual([100, 100, 50]);
    expect(new Set(server.received.flatMap((x) => x.keys)).size).toBe(250);
  });

  it('groups keys by their URL options, each group in its own request', async () => {
    const server = fakeServer();
    const r = resolver(server.fetch);
    const all = Promise.all([
      r.resolve({ key: 'a.jpg' }),
      r.resolve({ key: 'a.jpg', process: 'imageMogr2/thumbnail/320x' }),
      r.resolve({ key: 'b.jpg', process: 'imageMogr2/thumbnail/320x' }),
    ]);
    await vi.advanceTimersByTimeAsync(10);
    await all;
    const urls = server.received.map((x) => [x.url, x.keys]);
    expect(urls).toEqual([
      ['https://api.example/api/v1/images/batch/urls', ['a.jpg']],
      ['https://api.example/api/v1/images/batch/urls?process=imageMogr2%2Fthumbnail%2F320x', ['a.jpg', 'b.jpg']],
    ]);
  });

  it('sends signed links per item', async () => {
    const server = fakeServer();
    const r = resolver(server.fetch);
    const all = Promise.all([r.resolve({ key: 'a.jpg', exp: '1900000000', sig: 'ab12' }), r.resolve({ key: 'b.jpg' })]);
    await vi.advanceTimersByTimeAsync(10);
    await all;
    expect(server.received[0]?.items).toEqual([{ key: 'a.jpg', exp: 1900000000, sig: 'ab12' }]);
    expect(server.received[0]?.keys).toEqual(['b.jpg']);
  });
});

describe('expiry', () => {
  it('reuses a URL while it has life left, and resolves it again before it expires', async () => {
    const server = fakeServer(undefined, 600);
    const r = resolver(server.fetch);
    const first = r.resolve({ key: 'a.jpg' });
    await vi.advanceTimersByTimeAsync(10);
    const a = await first;
    // 600 s of life, 60 s margin: handed out until 540 s after the request.
    await vi.advanceTimersByTimeAsync(529_000);
    expect((await r.resolve({ key: 'a.jpg' })).url).toBe(a.url);
    expect(server.received).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(11_000);
    const again = r.resolve({ key: 'a.jpg' });
    await vi.advanceTimersByTimeAsync(10);
    const b = await again;
    expect(server.received).toHaveLength(2);
    expect(b.url).not.toBe(a.url);
    expect(b.freshUntil).toBeGreaterThan(Date.now());
  });

  it('keeps a quarter of a short lifetime as the margin', async () => {
    const server = fakeServer(undefined, 8);
    const r = resolver(server.fetch);
    const first = r.resolve({ key: 'a.jpg' });
    await vi.advanceTimersByTimeAsync(10);
    const a = await first;
    // 8 s of life: fresh for 6 s (from when the batch was sent), never to the last second.
    expect(a.freshUntil - Date.now()).toBeLessThanOrEqual(6_000);
    expect(a.freshUntil - Date.now()).toBeGreaterThan(5_900);
  });

  it('measures the lifetime on the page clock, whatever the server clock says', async () => {
    // A server clock an hour behind: expires_at is already past on this page's clock.
    const server = fakeServer((key) => ({
      url: `https://bucket.example/${key}`,
      expires_at: Date.now() / 1000 - 3000,
      ttl_remaining: 600,
      from_cache: true,
      degraded: false,
    }));
    const r = resolver(server.fetch);
    const first = r.resolve({ key: 'a.jpg' });
    await vi.advanceTimersByTimeAsync(10);
    await first;
    await r.resolve({ key: 'a.jpg' });
    expect(server.received).toHaveLength(1);
  });

  it('force bypasses the cache and asks the server to sign anew', async () => {
    const server = fakeServer();
    const r = resolver(server.fetch);
    const first = r.resolve({ key: 'a.jpg' });
    await vi.advanceTimersByTimeAsync(10);
    const a = await first;
    const forced = r.resolve({ key: 'a.jpg', force: true });
    await vi.advanceTimersByTimeAsync(10);
    const b = await forced;
    expect(server.received[1]?.url).toMatch(/\?force=true$/);
    expect(b.url).not.toBe(a.url);
    // The forced answer replaces the cached one.
    expect((await r.resolve({ key: 'a.jpg' })).url).toBe(b.url);
  });
});

describe('errors', () => {
  it('rejects every key of a batch the server refused, as retryable for a 5xx', async () => {
    const fetch = vi.fn(async () =>
      new Response(JSON.stringify({ type: 'https://image-url.dev/problems/unavailable', title: 'busy' }), {
        status: 503,
        headers: { 'content-type': 'application/problem+json' },
      }),
    );
    const r = resolver(fetch as unknown as typeof globalThis.fetch);
    const a = r.resolve({ key: 'a.jpg' }).catch((e: unknown) => e);
    const b = r.resolve({ key: 'b.jpg' }).catch((e: unknown) => e);
    await vi.advanceTimersByTimeAsync(10);
    for (const err of [await a, await b]) {
      expect(err).toBeInstanceOf(ResolveError);
      expect((err as ResolveError).kind).toBe('http');
      expect((err as ResolveError).status).toBe(503);
      expect((err as ResolveError).retryable).toBe(true);
    }
  });

  it('rejects one key the server refused, not the others, and not as retryable', async () => {
    const server = fakeServer((key) =>
      key === 'missing.jpg'
        ? { error: { type: 'https://image-url.dev/problems/not-found', title: 'no such image', status: 404 } }
        : undefined,
    );
    const r = resolver(server.fetch);
    const ok = r.resolve({ key: 'a.jpg' });
    const missing = r.resolve({ key: 'missing.jpg' }).catch((e: unknown) => e);
    await vi.advanceTimersByTimeAsync(10);
    expect((await ok).url).toContain('a.jpg');
    const err = (await missing) as ResolveError;
    expect(err.kind).toBe('item');
    expect(err.status).toBe(404);
    expect(err.retryable).toBe(false);
    // An error is not cached: asking again goes to the server again.
    const again = r.resolve({ key: 'missing.jpg' }).catch((e: unknown) => e);
    await vi.advanceTimersByTimeAsync(10);
    await again;
    expect(server.received).toHaveLength(2);
  });

  it('reports a server it cannot reach as a network error', async () => {
    const fetch = vi.fn(async () => {
      throw new TypeError('Failed to fetch');
    });
    const r = resolver(fetch as unknown as typeof globalThis.fetch);
    const err = r.resolve({ key: 'a.jpg' }).catch((e: unknown) => e);
    await vi.advanceTimersByTimeAsync(10);
    expect(await err).toMatchObject({ kind: 'network', retryable: true });
  });
});
