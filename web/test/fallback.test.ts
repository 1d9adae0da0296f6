import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Aborted, FallbackError, loadWithFallbacks, type FallbackContext } from '../src/fallback.js';
import { ResolveError, type ResolveRequest } from '../src/resolver.js';

beforeEach(() => vi.useFakeTimers());
afterEach(() => vi.useRealTimers());

/** A context whose loads succeed only for URLs `works` accepts; records every step. */
function context(works: (url: string) => boolean, overrides: Partial<FallbackContext> = {}) {
  const loads: { url: string; at: number }[] = [];
  const resolves: ResolveRequest[] = [];
  const start = Date.now();
  let signed = 0;
  const ctx: FallbackContext = {
    request: { key: 'a.jpg' },
    resolve: async (request) => {
      resolves.push(request);
      signed++;
      return { url: `https://cos/a.jpg?v=${signed}`, expiresAt: 0, freshUntil: 0, fromCache: false, degraded: false };
    },
    load: async (url) => {
      loads.push({ url, at: Date.now() - start });
      if (!works(url)) throw new Error('404');
    },
    proxyUrl: 'https://api/api/v1/images/a.jpg/proxy?mode=proxy',
    ...overrides,
  };
  return { ctx, loads, resolves };
}

describe('the fallback chain', () => {
  it('shows the first URL when it loads', async () => {
    const { ctx, loads, resolves } = context(() => true);
    const loaded = await loadWithFallbacks(ctx);
    expect(loaded).toMatchObject({ mode: 'direct', url: 'https://cos/a.jpg?v=1' });
    expect(loads).toHaveLength(1);
    expect(resolves).toEqual([{ key: 'a.jpg' }]);
  });

  it('asks for one new URL (force) when the first fails to load', async () => {
    const { ctx, resolves } = context((url) => url.endsWith('v=2'));
    const loaded = await loadWithFallbacks(ctx);
    expect(loaded.mode).toBe('direct');
    expect(resolves).toEqual([{ key: 'a.jpg' }, { key: 'a.jpg', force: true }]);
    expect(loaded.attempts.map((a) => [a.forced, a.ok])).toEqual([
      [false, false],
      [true, true],
    ]);
  });

  it('retries with a doubling delay, then falls back to proxy mode', async () => {
    const { ctx, loads } = context((url) => url.includes('mode=proxy'), { retries: 2, retryDelayMs: 500 });
    const result = loadWithFallbacks(ctx);
    await vi.advanceTimersByTimeAsync(0);
    expect(loads.map((l) => l.at)).toEqual([0, 0]);
    await vi.advanceTimersByTimeAsync(499);
    expect(loads).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(1);
    expect(loads).toHaveLength(3);
    await vi.advanceTimersByTimeAsync(999);
    expect(loads).toHaveLength(3);
    await vi.advanceTimersByTimeAsync(1);
    const loaded = await result;
    expect(loads.map((l) => l.at)).toEqual([0, 0, 500, 1500, 1500]);
    expect(loaded).toMatchObject({ mode: 'proxy', url: ctx.proxyUrl });
  });

  it('ends in the error state when proxy mode fails too', async () => {
    const { ctx, loads } = context(() => false, { retries: 1, retryDelayMs: 100 });
    const result = loadWithFallbacks(ctx).catch((e: unknown) => e);
    await vi.advanceTimersByTimeAsync(100);
    const err = (await result) as FallbackError;
    expect(err).toBeInstanceOf(FallbackError);
    expect(err.attempts.map((a) => `${a.mode}:${a.ok}`)).toEqual([
      'direct:false',
      'direct:false',
      'direct:false',
      'proxy:false',
    ]);
    expect(loads).toHaveLength(4);
  });

  it('stops at once for a key the server refuses for good, without proxy mode', async () => {
    const { ctx, loads } = context(() => true, {
      resolve: async () => {
        throw new ResolveError('item', 404, 'https://image-url.dev/problems/not-found', 'no such image');
      },
    });
    const err = (await loadWithFallbacks(ctx).catch((e: unknown) => e)) as FallbackError;
    expect(err).toBeInstanceOf(FallbackError);
    expect(err.refusal?.status).toBe(404);
    expect(loads).toHaveLength(0);
  });

  it('goes on to proxy mode when the server cannot be reached for URLs', async () => {
    const { ctx, loads } = context(() => true, {
      retries: 1,
      retryDelayMs: 10,
      resolve: async () => {
        throw new ResolveError('network', 0, '', 'Failed to fetch');
      },
    });
    const result = loadWithFallbacks(ctx);
    await vi.advanceTimersByTimeAsync(10);
    expect((await result).mode).toBe('proxy');
    expect(loads.map((l) => l.url)).toEqual([ctx.proxyUrl]);
  });

  it('stops when aborted while waiting to retry, and loads nothing more', async () => {
    const abort = new AbortController();
    const { ctx, loads } = context(() => false, { retryDelayMs: 1000, signal: abort.signal });
    const result = loadWithFallbacks(ctx).catch((e: unknown) => e);
    await vi.advanceTimersByTimeAsync(500);
    abort.abort();
    expect(await result).toBeInstanceOf(Aborted);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(loads).toHaveLength(2);
  });
});
