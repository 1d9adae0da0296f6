/**
 * `<smart-image>`: an image whose source is a private COS object, shown through
 * image-url's presigned URLs. See the package README for every attribute and event.
 */

import { Aborted, FallbackError, loadWithFallbacks, type Attempt, type LoadMode } from './fallback.js';
import { UrlResolver, type ResolveRequest } from './resolver.js';

/** The detail of `smart-image:load`. */
export interface SmartImageLoadDetail {
  key: string;
  /** The URL shown (a presigned URL, or the proxy URL in proxy mode). */
  url: string;
  mode: LoadMode;
  /** The server answered from its cache (direct mode). */
  fromCache: boolean;
  /** The server answered without its cache (degraded). */
  degraded: boolean;
  /** When the URL expires, unix ms (server clock; 0 in proxy mode). */
  expiresAt: number;
  attempts: Attempt[];
}

/** The detail of `smart-image:error`. */
export interface SmartImageErrorDetail {
  key: string;
  message: string;
  /** The HTTP status the server gave the key, when it refused it (e.g. 404). */
  status: number;
  /** The server's problem type, when it gave one. */
  type: string;
  attempts: Attempt[];
}

// Custom elements exist only in browsers; on a server (SSR) the module must still load.
const Base: typeof HTMLElement =
  typeof HTMLElement === 'undefined' ? (class {} as unknown as typeof HTMLElement) : HTMLElement;

const resolvers = new Map<string, UrlResolver>();
const observers = new Map<string, IntersectionObserver>();

/** The shared resolver of `apiBase` (one batch queue and URL cache per server). */
export function resolverFor(apiBase: string): UrlResolver {
  const base = apiBase.replace(/\/+$/, '');
  let resolver = resolvers.get(base);
  if (!resolver) {
    resolver = new UrlResolver({ apiBase: base });
    resolvers.set(base, resolver);
  }
  return resolver;
}

function observerFor(margin: string): IntersectionObserver {
  let observer = observers.get(margin);
  if (!observer) {
    observer = new IntersectionObserver(
      (entries, self) => {
        for (const entry of entries) {
          if (entry.isIntersecting) {
            self.unobserve(entry.target);
            (entry.target as SmartImageElement).start();
          }
        }
      },
      { rootMargin: margin },
    );
    observers.set(margin, observer);
  }
  return observer;
}

/** The path of `key` under `/api/v1/images/`, each segment escaped. A `.` or `..`
 * segment would be resolved away by the browser, so then every `/` is escaped too. */
export function keyPath(key: string): string {
  const segments = key.split('/');
  return segments.some((s) => s === '.' || s === '..')
    ? encodeURIComponent(key)
    : segments.map(encodeURIComponent).join('/');
}

const thumbnail = (width: string) => `imageMogr2/thumbnail/${width}x`;
const joinRules = (...rules: (string | null | undefined)[]) => rules.filter(Boolean).join('|');

const STYLE = `:host{display:inline-block;position:relative;overflow:hidden;vertical-align:middle}
img,[part=placeholder]{display:block;width:100%;height:100%;object-fit:var(--smart-image-fit,cover)}
[part=placeholder]{position:absolute;inset:0;background:center/cover no-repeat}
:host([state=loaded]) [part=placeholder],:host([state=error]) [part=placeholder],[hidden]{display:none}
:host(:not([state=loaded])) img{visibility:hidden}
[part=error]{display:flex;flex-direction:column;align-items:center;justify-content:center;gap:.4em;box-sizing:border-box;min-height:100%;padding:.5em;font:inherit;color:#555;background:#f3f3f3;text-align:center}
:host(:not([state=error])) [part=error]{display:none}`;

const WATCHED = ['key', 'image-key', 'process', 'thumbnail', 'srcset-widths', 'api-base', 'exp', 'sig'];

/** The `<smart-image>` element. */
export class SmartImageElement extends Base {
  static get observedAttributes(): string[] {
    return [...WATCHED, 'alt', 'width', 'height', 'sizes', 'placeholder', 'placeholder-src'];
  }

  private run: AbortController | undefined;
  private started = false;
  private img: HTMLImageElement | undefined;
  private size: HTMLStyleElement | undefined;
  private placeholderBox: HTMLElement | undefined;
  private errorBox: HTMLElement | undefined;
  private pendingSrcset = '';

  /** The object key (`key`, or `image-key` where `key` is reserved, as in React). */
  get key(): string {
    return this.getAttribute('key') ?? this.getAttribute('image-key') ?? '';
  }

  /** The server's origin: `api-base`, or this page's origin. */
  get apiBase(): string {
    return this.getAttribute('api-base') ?? location.origin;
  }

  connectedCallback(): void {
    if (!this.img) this.render();
    this.applyPresentation();
    this.observe();
  }

  disconnectedCallback(): void {
    this.run?.abort();
    this.run = undefined;
    for (const observer of observers.values()) observer.unobserve(this);
    // Reconnected later, the element loads again (from the resolver's cache if fresh).
    this.started = false;
  }

  attributeChangedCallback(name: string, old: string | null, value: string | null): void {
    if (old === value || !this.img) return;
    this.applyPresentation();
    if (WATCHED.includes(name) && this.started) this.start();
  }

  /** Shows the image again, with a newly resolved URL if the one held is about to
   * expire. */
  reload(): void {
    this.start();
  }

  /** Forgets this element's URLs and loads again (the server answers from its cache if
   * its URL is still good). */
  refresh(): void {
    resolverFor(this.apiBase).forget(this.key);
    this.start();
  }

  /** After the error state: tries the whole chain again. */
  retry(): void {
    this.start();
  }

  /** Starts (or restarts) loading. Called when the element comes near the viewport. */
  start(): void {
    if (!this.img) this.render();
    this.run?.abort();
    const run = new AbortController();
    this.run = run;
    this.started = true;
    const key = this.key;
    if (!this.hasAttribute('alt')) console.warn('<smart-image> needs an alt attribute', key);
    this.setAttribute('state', 'loading');
    this.removeAttribute('mode');
    this.applyPlaceholder(true);
    const resolver = resolverFor(this.apiBase);
    const request = this.request(key, this.process());
    const widths = (this.getAttribute('srcset-widths') ?? '').split(/[\s,]+/).filter((w) => /^\d+$/.test(w));
    const img = this.img as HTMLImageElement;
    const resolve = async (req: ResolveRequest) => {
      const [main, ...candidates] = await Promise.all([
        resolver.resolve(req),
        ...widths.map((w) =>
          resolver.resolve({ ...req, process: joinRules(this.getAttribute('process'), thumbnail(w)) }),
        ),
      ]);
      this.pendingSrcset = candidates.map((c, i) => `${c.url} ${widths[i]}w`).join(', ');
      return main;
    };
    const load = (url: string) =>
      new Promise<void>((ok, fail) => {
        const done = () => {
          img.onload = img.onerror = null;
        };
        img.onload = () => {
          done();
          ok();
        };
        img.onerror = () => {
          done();
          fail(new Error('the image failed to load'));
        };
        run.signal.addEventListener('abort', done, { once: true });
        const direct = url !== this.proxyUrl(request);
        if (direct && this.pendingSrcset) img.srcset = this.pendingSrcset;
        else img.removeAttribute('srcset');
        img.src = url;
      });
    loadWithFallbacks({
      request,
      resolve,
      load,
      proxyUrl: this.hasAttribute('no-proxy') ? undefined : this.proxyUrl(request),
      retries: numberAttr(this, 'retries', 2),
      retryDelayMs: numberAttr(this, 'retry-delay', 500),
      signal: run.signal,
    }).then(
      (loaded) => {
        if (run.signal.aborted) return;
        this.setAttribute('state', 'loaded');
        this.setAttribute('mode', loaded.mode);
        this.emit<SmartImageLoadDetail>('smart-image:load', {
          key,
          url: loaded.url,
          mode: loaded.mode,
          fromCache: loaded.resolved?.fromCache ?? false,
          degraded: loaded.resolved?.degraded ?? false,
          expiresAt: loaded.resolved?.expiresAt ?? 0,
          attempts: loaded.attempts,
        });
      },
      (err: unknown) => {
        if (err instanceof Aborted || run.signal.aborted) return;
        const failure = err instanceof FallbackError ? err : new FallbackError(String(err), []);
        img.removeAttribute('srcset');
        img.removeAttribute('src');
        this.setAttribute('state', 'error');
        this.emit<SmartImageErrorDetail>('smart-image:error', {
          key,
          message: failure.message,
          status: failure.refusal?.status ?? 0,
          type: failure.refusal?.type ?? '',
          attempts: failure.attempts,
        });
      },
    );
  }

  /** The CI rule of the main URL: `process`, with `thumbnail` appended. */
  private process(): string {
    const width = this.getAttribute('thumbnail');
    return joinRules(this.getAttribute('process'), width ? thumbnail(width) : '');
  }

  private request(key: string, process: string): ResolveRequest {
    const request: ResolveRequest = { key };
    if (process) request.process = process;
    const exp = this.getAttribute('exp');
    const sig = this.getAttribute('sig');
    if (exp !== null && sig !== null) {
      request.exp = exp;
      request.sig = sig;
    }
    return request;
  }

  private proxyUrl(request: ResolveRequest): string {
    const query = new URLSearchParams({ mode: 'proxy' });
    if (request.process) query.set('process', request.process);
    if (request.exp !== undefined && request.sig !== undefined) {
      query.set('exp', request.exp);
      query.set('sig', request.sig);
    }
    return `${resolverFor(this.apiBase).apiBase}/api/v1/images/${keyPath(request.key)}/proxy?${query}`;
  }

  private emit<T>(type: string, detail: T): void {
    this.dispatchEvent(new CustomEvent<T>(type, { detail, bubbles: true, composed: true }));
  }

  private observe(): void {
    if (this.started) return;
    if (this.getAttribute('loading') === 'eager' || typeof IntersectionObserver === 'undefined') {
      this.start();
      return;
    }
    observerFor(this.getAttribute('root-margin') ?? '200px').observe(this);
  }

  private render(): void {
    const root = this.shadowRoot ?? this.attachShadow({ mode: 'open' });
    const style = document.createElement('style');
    style.textContent = STYLE;
    this.size = document.createElement('style');
    this.placeholderBox = document.createElement('div');
    this.placeholderBox.setAttribute('part', 'placeholder');
    this.img = document.createElement('img');
    this.img.setAttribute('part', 'img');
    this.img.decoding = 'async';
    this.errorBox = document.createElement('div');
    this.errorBox.setAttribute('part', 'error');
    this.errorBox.setAttribute('role', 'img');
    const text = document.createElement('span');
    const button = document.createElement('button');
    button.type = 'button';
    button.setAttribute('part', 'retry');
    button.textContent = 'Retry';
    button.addEventListener('click', () => this.retry());
    this.errorBox.append(text, button);
    root.append(style, this.size, this.placeholderBox, this.img, this.errorBox);
  }

  /** Size, alt text and placeholder from the attributes. */
  private applyPresentation(): void {
    const img = this.img as HTMLImageElement;
    const alt = this.getAttribute('alt') ?? '';
    img.alt = alt;
    (this.errorBox as HTMLElement).setAttribute('aria-label', alt);
    ((this.errorBox as HTMLElement).firstChild as HTMLElement).textContent = alt;
    const width = this.getAttribute('width');
    const height = this.getAttribute('height');
    for (const [name, value] of [['width', width], ['height', height], ['sizes', this.getAttribute('sizes')]]) {
      if (value) img.setAttribute(name as string, value);
      else img.removeAttribute(name as string);
    }
    // Width and height reserve the box before the image arrives: no layout shift.
    const w = Number(width);
    const h = Number(height);
    (this.size as HTMLStyleElement).textContent =
      w > 0 ? `:host{width:${w}px;${h > 0 ? `aspect-ratio:${w}/${h}` : ''}}` : '';
    this.applyPlaceholder(this.started);
  }

  /** The placeholder; a blurred thumbnail from COS only once the image is wanted. */
  private applyPlaceholder(wanted: boolean): void {
    const box = this.placeholderBox as HTMLElement;
    const value = this.getAttribute('placeholder') ?? '';
    box.style.cssText = '';
    if (value === 'blur') {
      const src = this.getAttribute('placeholder-src');
      box.style.filter = 'blur(10px)';
      box.style.transform = 'scale(1.1)';
      if (src) {
        box.style.backgroundImage = cssUrl(src);
      } else if (this.key && wanted) {
        // A tiny thumbnail of the image itself, blurred (one more URL in the same batch).
        resolverFor(this.apiBase)
          .resolve(this.request(this.key, thumbnail('24')))
          .then((tiny) => (box.style.backgroundImage = cssUrl(tiny.url)))
          .catch(() => undefined);
      }
    } else if (value.startsWith('data:')) {
      box.style.backgroundImage = cssUrl(value);
    } else if (value) {
      box.style.backgroundColor = value;
    }
  }
}

function cssUrl(url: string): string {
  return `url("${url.replace(/["\\\n]/g, encodeURIComponent)}")`;
}

function numberAttr(el: Element, name: string, fallback: number): number {
  const value = Number(el.getAttribute(name) ?? NaN);
  return Number.isFinite(value) && value >= 0 ? value : fallback;
}
