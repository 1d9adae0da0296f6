/**
 * The fallback chain of one image, kept apart from the DOM so that it can be tested with
 * fake timers:
 *
 * 1. the URL from the resolver (its cache, or the next batch);
 * 2. if the image fails to load: one new URL, signed for it (`force`);
 * 3. then `retries` more tries, waiting `retryDelayMs`, doubling each time;
 * 4. then proxy mode: the server fetches the object and streams it;
 * 5. then the error state (the caller shows the alt text and a retry).
 *
 * A key the server refuses for good (404, 403, 400) skips straight to the error: neither
 * a new URL nor the proxy can help it.
 */

import { ResolveError, type ResolveRequest, type ResolvedUrl } from './resolver.js';

/** How the image was finally shown. */
export type LoadMode = 'direct' | 'proxy';

/** One step the chain took. */
export interface Attempt {
  /** `resolve`: asking for a URL; `load`: loading the image. */
  step: 'resolve' | 'load';
  mode: LoadMode;
  /** The URL was signed anew for this attempt. */
  forced: boolean;
  ok: boolean;
  /** Why it failed. */
  error?: string;
}

/** The chain's result. */
export interface Loaded {
  url: string;
  mode: LoadMode;
  resolved?: ResolvedUrl;
  attempts: Attempt[];
}

/** The chain ended in the error state. */
export class FallbackError extends Error {
  readonly attempts: Attempt[];
  /** The server's refusal, when it refused the key for good. */
  readonly refusal?: ResolveError;

  constructor(message: string, attempts: Attempt[], refusal?: ResolveError) {
    super(message);
    this.name = 'FallbackError';
    this.attempts = attempts;
    this.refusal = refusal;
  }
}

/** The chain was stopped (the element left the page, or its key changed). */
export class Aborted extends Error {
  constructor() {
    super('aborted');
    this.name = 'Aborted';
  }
}

/** What the chain needs from its environment. */
export interface FallbackContext {
  request: ResolveRequest;
  resolve: (request: ResolveRequest) => Promise<ResolvedUrl>;
  /** Loads `url` into the image; resolves when it shows, rejects when it fails. */
  load: (url: string) => Promise<void>;
  /** The proxy-mode URL, or undefined to skip proxy mode. */
  proxyUrl?: string;
  /** Tries after the forced one (default 2). */
  retries?: number;
  /** The first wait between tries (default 500 ms), doubled each time. */
  retryDelayMs?: number;
  signal?: AbortSignal;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new Aborted());
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(new Aborted());
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** Runs the chain; see the module's documentation. */
export async function loadWithFallbacks(ctx: FallbackContext): Promise<Loaded> {
  const attempts: Attempt[] = [];
  const retries = ctx.retries ?? 2;
  const delay = ctx.retryDelayMs ?? 500;
  const check = () => {
    if (ctx.signal?.aborted) throw new Aborted();
  };
  // Set by `direct` when the server refuses the key for good.
  const verdict: { refused?: ResolveError } = {};

  const direct = async (forced: boolean): Promise<Loaded | undefined> => {
    let resolved: ResolvedUrl;
    try {
      resolved = await ctx.resolve(forced ? { ...ctx.request, force: true } : ctx.request);
    } catch (err) {
      check();
      const error = err instanceof ResolveError ? err : new ResolveError('network', 0, '', String(err));
      attempts.push({ step: 'resolve', mode: 'direct', forced, ok: false, error: error.message });
      if (!error.retryable) verdict.refused = error;
      return undefined;
    }
    check();
    try {
      await ctx.load(resolved.url);
    } catch (err) {
      check();
      attempts.push({ step: 'load', mode: 'direct', forced, ok: false, error: String(err) });
      return undefined;
    }
    check();
    attempts.push({ step: 'load', mode: 'direct', forced, ok: true });
    return { url: resolved.url, mode: 'direct', resolved, attempts };
  };

  const refusal = () =>
    verdict.refused && new FallbackError(verdict.refused.message, attempts, verdict.refused);
  let loaded = await direct(false);
  if (loaded) return loaded;
  let refused = refusal();
  if (refused) throw refused;
  loaded = await direct(true);
  if (loaded) return loaded;
  for (let i = 0; i < retries && !verdict.refused; i++) {
    await sleep(delay * 2 ** i, ctx.signal);
    loaded = await direct(false);
    if (loaded) return loaded;
  }
  refused = refusal();
  if (refused) throw refused;
  if (ctx.proxyUrl !== undefined) {
    try {
      await ctx.load(ctx.proxyUrl);
      check();
      attempts.push({ step: 'load', mode: 'proxy', forced: false, ok: true });
      return { url: ctx.proxyUrl, mode: 'proxy', attempts };
    } catch (err) {
      check();
      attempts.push({ step: 'load', mode: 'proxy', forced: false, ok: false, error: String(err) });
    }
  }
  throw new FallbackError('the image could not be loaded', attempts);
}
