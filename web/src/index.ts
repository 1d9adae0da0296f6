/**
 * `<smart-image>`: private COS images through image-url's presigned URLs.
 *
 * Importing this module defines the element (in a browser; on a server it only exports).
 *
 * ```html
 * <script type="module" src="/static/smart-image.js"></script>
 * <smart-image key="images/u1/a.jpg" alt="A cat" width="320" height="240"></smart-image>
 * ```
 */

import { SmartImageElement } from './element.js';

export { SmartImageElement, resolverFor, keyPath } from './element.js';
export type { SmartImageLoadDetail, SmartImageErrorDetail } from './element.js';
export { UrlResolver, ResolveError } from './resolver.js';
export type { ResolveRequest, ResolvedUrl, ResolverOptions } from './resolver.js';
export { loadWithFallbacks, FallbackError, Aborted } from './fallback.js';
export type { Attempt, FallbackContext, Loaded, LoadMode } from './fallback.js';

if (typeof customElements !== 'undefined' && !customElements.get('smart-image')) {
  customElements.define('smart-image', SmartImageElement);
}

declare global {
  interface HTMLElementTagNameMap {
    'smart-image': SmartImageElement;
  }
  interface HTMLElementEventMap {
    'smart-image:load': CustomEvent<import('./element.js').SmartImageLoadDetail>;
    'smart-image:error': CustomEvent<import('./element.js').SmartImageErrorDetail>;
  }
}
