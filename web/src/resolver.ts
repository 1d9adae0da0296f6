/**
 * Resolves object keys to presigned URLs through image-url's batch endpoint.
 *
 * Requests that arrive within `batchWindowMs` of each other are sent together: one
 * `POST /api/v1/images/batch/urls` per group of URL options, de-duplicated, at most
 * `maxBatch` keys per request. Answers are kept until they are about to expire: an entry
 * is reused only while more than `min(refreshMarginMs, a quarter of its lifetime)` is
 * left, so a URL is never handed out when it could expire before the image loads.
 */

/** What to resolve: an object key with its URL options and, when the server requires
 * signed links, the link's `exp` and `sig`. */
export interface ResolveRequest {
  key: string;
  /** A COS image-processing (CI) rule, e.g. `imageMogr2/thumbnail/320x`. */
  process?: string;
  /** Signed link expiry, unix seconds. */
  exp?: string;
  /** Signed link signature. */
  sig?: string;
  /** Ask the server to sign a new URL (after the current one failed to load). */
  force?: boolean;
}

/** A resolved URL. `expiresAt` is the server's clock; `freshUntil` this page's. */
export interface ResolvedUrl {
  url: string;
  /** Unix milliseconds, as the server reported it. */
  expiresAt: number;
  /** This page's clock (ms) at which the URL stops being handed out. */
  freshUntil: number;
  /** The server answered from its cache. */
  fromCache: boolean;
  /** The server answered without its cache (degraded). */
  degraded: boolean;
}

/** Why a key could not be resolved. */
export class ResolveError extends Error {
  /** `network`: no answer; `http`: the whole batch was refused; `item`: this key was. */
  readonly kind: 'network' | 'http' | 'item';
  /** The HTTP status, when there was one. */
  readonly status: number;
  /** The problem type (e.g. `not-found`), when the server gave one. */
  readonly type: string;

  constructor(kind: 'network' | 'http' | 'item', status: number, type: string, message: string) {
    super(message);
    this.name = 'ResolveError';
    this.kind = kind;
    this.status = status;
    this.type = type;
  }

  /** Whether asking again (or proxy mode) may help: not for a key the server refused
   * for good (404, 400, 403 …). */
  get retryable(): boolean {
    return this.kind === 'network' || this.status === 0 || this.status === 429 || this.status >= 500;
  }
}

/** Settings of a {@link UrlResolver}. */
export interface ResolverOptions {
  /** The server's origin (and path prefix, if any), without a trailing slash. */
  apiBase: string;
  /** How long to wait for more keys before sending a batch (default 10 ms). */
  batchWindowMs?: number;
  /** Most keys per request (default 100, the server's default `max_batch`). */
  maxBatch?: number;
  /** Re-resolve a URL with less than this left (default 60 s; capped at a quarter of
   * the URL's lifetime). */
  refreshMarginMs?: number;
  /** `fetch` (default: the global one). */
  fetch?: typeof fetch;
  /** The clock, ms (default `Date.now`). */
  now?: () => number;
}

interface Waiter {
  request: ResolveRequest;
  resolve: (url: ResolvedUrl) => void;
  reject: (err: ResolveError) => void;
}

interface Group {
  query: string;
  waiters: Map<string, Waiter[]>;
  timer: ReturnType<typeof setTimeout> | undefined;
}

interface ItemAnswer {
  url?: string;
  expires_at?: number;
  ttl_remaining?: number;
  from_cache?: boolean;
  degraded?: boolean;
  error?: { type?: string; title?: string; status?: number; detail?: string };
}

/** The options a URL depends on, as the batch endpoint's query string. */
function queryOf(request: ResolveRequest): string {
  const params = new URLSearchParams();
  if (request.process) params.set('process', request.process);
  if (request.force) params.set('force', 'true');
  return params.toString();
}

/** Resolves keys to URLs in batches, with a cache of the answers. */
export class UrlResolver {
  readonly apiBase: string;
  private readonly window: number;
  private readonly maxBatch: number;
  private readonly margin: number;
  private readonly fetcher: typeof fetch;
  private readonly now: () => number;
  private readonly cache = new Map<string, ResolvedUrl>();
  private readonly groups = new Map<string, Group>();
  /** Batch requests sent so far. */
  requests = 0;

  constructor(options: ResolverOptions) {
    this.apiBase = options.apiBase.replace(/\/+$/, '');
    this.window = options.batchWindowMs ?? 10;
    this.maxBatch = options.maxBatch ?? 100;
    this.margin = options.refreshMarginMs ?? 60_000;
    this.fetcher = options.fetch ?? ((input, init) => fetch(input, init));
    this.now = options.now ?? Date.now;
  }

  /** The URL for `request`: from this resolver's cache while fresh, else from the
   * server in the next batch. */
  resolve(request: ResolveRequest): Promise<ResolvedUrl> {
    const id = this.cacheId(request);
    if (!request.force) {
      const cached = this.fresh(id);
      if (cached) return Promise.resolve(cached);
    } else {
      this.cache.delete(id);
    }
    return new Promise((resolve, reject) => {
      const query = queryOf(request);
      let group = this.groups.get(query);
      if (!group) {
        group = { query, waiters: new Map(), timer: undefined };
        this.groups.set(query, group);
      }
      const waiters = group.waiters.get(request.key);
      const waiter: Waiter = { request, resolve, reject };
      if (waiters) waiters.push(waiter);
      else group.waiters.set(request.key, [waiter]);
      if (group.timer === undefined) {
        const pending = group;
        group.timer = setTimeout(() => this.flush(pending), this.window);
      }
    });
  }

  /** A cached URL with enough life left, if any. */
  fresh(id: string): ResolvedUrl | undefined {
    const cached = this.cache.get(id);
    if (cached && cached.freshUntil > this.now()) return cached;
    if (cached) this.cache.delete(id);
    return undefined;
  }

  /** Forgets every cached URL of `key` (all options). */
  forget(key: string): void {
    for (const id of [...this.cache.keys()]) {
      if (JSON.parse(id)[0] === key) this.cache.delete(id);
    }
  }

  /** The cache id of a request: the key and the options its URL depends on. */
  cacheId(request: ResolveRequest): string {
    return JSON.stringify([request.key, request.process ?? '']);
  }

  private flush(group: Group): void {
    this.groups.delete(group.query);
    const entries = [...group.waiters.entries()];
    for (let i = 0; i < entries.length; i += this.maxBatch) {
      void this.send(group.query, entries.slice(i, i + this.maxBatch));
    }
  }

  private async send(query: string, entries: [string, Waiter[]][]): Promise<void> {
    const keys: string[] = [];
    const items: { key: string; exp: number; sig: string }[] = [];
    for (const [key, waiters] of entries) {
      const linked = waiters.find((w) => w.request.exp !== undefined && w.request.sig !== undefined);
      if (linked) items.push({ key, exp: Number(linked.request.exp), sig: linked.request.sig as string });
      else keys.push(key);
    }
    const fail = (err: ResolveError) => {
      for (const [, waiters] of entries) for (const w of waiters) w.reject(err);
    };
    this.requests++;
    const sentAt = this.now();
    let body: { results?: Record<string, ItemAnswer> };
    try {
      const response = await this.fetcher(
        `${this.apiBase}/api/v1/images/batch/urls${query ? `?${query}` : ''}`,
        {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(items.length ? { keys, items } : { keys }),
        },
      );
      if (!response.ok) {
        let type = '';
        let title = `the server answered ${response.status}`;
        try {
          const problem = (await response.json()) as { type?: string; title?: string };
          type = problem.type ?? '';
          title = problem.title ?? title;
        } catch {
          // Not a problem document: the status says enough.
        }
        fail(new ResolveError('http', response.status, type, title));
        return;
      }
      body = (await response.json()) as typeof body;
    } catch (err) {
      fail(new ResolveError('network', 0, '', `cannot reach ${this.apiBase}: ${String(err)}`));
      return;
    }
    const results = body.results ?? {};
    for (const [key, waiters] of entries) {
      const answer = results[key];
      if (!answer || typeof answer.url !== 'string') {
        const error = answer?.error;
        const err = new ResolveError(
          'item',
          error?.status ?? 502,
          error?.type ?? '',
          error?.title ?? 'no URL for this key in the answer',
        );
        for (const w of waiters) w.reject(err);
        continue;
      }
      // The lifetime is measured on this page's clock from when the batch was sent, so
      // a skewed clock cannot make an expired URL look fresh.
      const ttl = (answer.ttl_remaining ?? 0) * 1000;
      const margin = Math.min(this.margin, ttl / 4);
      const resolved: ResolvedUrl = {
        url: answer.url,
        expiresAt: (answer.expires_at ?? 0) * 1000,
        freshUntil: sentAt + ttl - margin,
        fromCache: answer.from_cache === true,
        degraded: answer.degraded === true,
      };
      for (const w of waiters) {
        this.cache.set(this.cacheId(w.request), resolved);
        w.resolve(resolved);
      }
    }
  }
}
