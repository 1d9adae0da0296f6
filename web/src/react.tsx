/**
 * `<SmartImage>`: the `<smart-image>` element for React.
 *
 * On a server it renders the element's tag with its size and placeholder, which is what
 * the page shows until the element loads in the browser.
 *
 * ```tsx
 * import { SmartImage } from '@image-url/smart-image/react';
 * <SmartImage imageKey="images/u1/a.jpg" alt="A cat" width={320} height={240} />
 * ```
 */

import { createElement, useEffect, useRef, type CSSProperties } from 'react';
import type { SmartImageErrorDetail, SmartImageLoadDetail } from './element.js';
import './index.js';

/** The props of {@link SmartImage}: the element's attributes, camel-cased. */
export interface SmartImageProps {
  /** The object key (`key` is React's own prop). */
  imageKey: string;
  /** Required: the text shown when the image cannot be. */
  alt: string;
  apiBase?: string;
  width?: number;
  height?: number;
  sizes?: string;
  /** Widths for `srcset`, each a COS thumbnail. */
  srcsetWidths?: number[];
  /** A COS image-processing rule. */
  process?: string;
  /** A thumbnail width, px. */
  thumbnail?: number;
  /** A colour, a tiny data URL, or `blur`. */
  placeholder?: string;
  placeholderSrc?: string;
  loading?: 'lazy' | 'eager';
  rootMargin?: string;
  /** Signed link: expiry, unix seconds. */
  exp?: number | string;
  /** Signed link: signature. */
  sig?: string;
  retries?: number;
  retryDelay?: number;
  noProxy?: boolean;
  className?: string;
  style?: CSSProperties;
  onLoad?: (event: CustomEvent<SmartImageLoadDetail>) => void;
  onError?: (event: CustomEvent<SmartImageErrorDetail>) => void;
}

/** Renders `<smart-image>` with the props as attributes. */
export function SmartImage(props: SmartImageProps) {
  const ref = useRef<HTMLElement>(null);
  const { onLoad, onError } = props;
  useEffect(() => {
    const element = ref.current;
    if (!element) return undefined;
    const load = (e: Event) => onLoad?.(e as CustomEvent<SmartImageLoadDetail>);
    const error = (e: Event) => onError?.(e as CustomEvent<SmartImageErrorDetail>);
    element.addEventListener('smart-image:load', load);
    element.addEventListener('smart-image:error', error);
    return () => {
      element.removeEventListener('smart-image:load', load);
      element.removeEventListener('smart-image:error', error);
    };
  }, [onLoad, onError]);

  const attributes: Record<string, string | undefined> = {
    'image-key': props.imageKey,
    alt: props.alt,
    'api-base': props.apiBase,
    width: props.width?.toString(),
    height: props.height?.toString(),
    sizes: props.sizes,
    'srcset-widths': props.srcsetWidths?.join(' '),
    process: props.process,
    thumbnail: props.thumbnail?.toString(),
    placeholder: props.placeholder,
    'placeholder-src': props.placeholderSrc,
    loading: props.loading,
    'root-margin': props.rootMargin,
    exp: props.exp?.toString(),
    sig: props.sig,
    retries: props.retries?.toString(),
    'retry-delay': props.retryDelay?.toString(),
    'no-proxy': props.noProxy ? '' : undefined,
  };
  // The box the element will fill, so that server-rendered HTML does not shift when the
  // image arrives; a colour placeholder shows in it before the element runs.
  const style: CSSProperties = { display: 'inline-block', ...props.style };
  if (props.width) {
    style.width = props.width;
    if (props.height) style.aspectRatio = `${props.width} / ${props.height}`;
  }
  if (props.placeholder && !props.placeholder.startsWith('data:') && props.placeholder !== 'blur') {
    style.backgroundColor ??= props.placeholder;
  }
  return createElement('smart-image', { ref, class: props.className, style, ...attributes });
}
