import { vi } from 'vitest';

/** One batch request the fake server received. */
export interface Received {
  url: string;
  keys: string[];
  items: { key: string; exp: number; sig: string }[];
}

/** A fake batch endpoint: answers every key with a URL living `ttl` seconds, unless
 * `answer` says otherwise; records what it received. */
export function fakeServer(answer?: (key: string, query: URLSearchParams) => unknown, ttl = 3600) {
  const received: Received[] = [];
  let signed = 0;
  const fetch = vi.fn(async (input: RequestInfo | URL, init?: RequestInit) => {
    const url = String(input);
    const body = JSON.parse(String(init?.body)) as { keys?: string[]; items?: Received['items'] };
    const request = { url, keys: body.keys ?? [], items: body.items ?? [] };
    received.push(request);
    const query = new URL(url).searchParams;
    const results: Record<string, unknown> = {};
    for (const key of [...request.keys, ...request.items.map((i) => i.key)]) {
      signed++;
      results[key] = answer?.(key, query) ?? {
        url: `https://bucket.example/${key}?sig=${signed}`,
        expires_at: Date.now() / 1000 + ttl,
        ttl_remaining: ttl,
        from_cache: false,
        degraded: false,
      };
    }
    return new Response(JSON.stringify({ results }), { headers: { 'content-type': 'application/json' } });
  });
  return { fetch: fetch as unknown as typeof globalThis.fetch, received };
}
