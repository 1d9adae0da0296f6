import { describe, expect, it } from 'vitest';
import { createElement } from 'react';
import { renderToString } from 'react-dom/server';
import { SmartImage } from '../src/react.js';

describe('<SmartImage> on the server', () => {
  it('renders the element with its attributes and a sized placeholder box', () => {
    const html = renderToString(
      createElement(SmartImage, {
        imageKey: 'images/u1/a.jpg',
        alt: 'A cat',
        width: 320,
        height: 240,
        placeholder: '#ddd',
        srcsetWidths: [320, 640],
      }),
    );
    expect(html).toContain('<smart-image');
    expect(html).toContain('image-key="images/u1/a.jpg"');
    expect(html).toContain('alt="A cat"');
    expect(html).toContain('srcset-widths="320 640"');
    expect(html).toMatch(/style="[^"]*width:320px/);
    expect(html).toMatch(/aspect-ratio:320 \/ 240/);
    expect(html).toMatch(/background-color:#ddd/);
    expect(html).not.toContain('undefined');
  });
});
