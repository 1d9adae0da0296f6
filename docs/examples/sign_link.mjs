// Signed links to an image-url server: the reference implementation in JavaScript
// (Node.js 18+, only the standard library; in a browser use SubtleCrypto instead).
//
// Usage: node sign_link.mjs SECRET EXP KEY [NAME=VALUE ...]
// prints the link's path and query. See docs/security.md for the format.

import { createHmac } from "node:crypto";

// URL options in the order they are signed (alphabetical).
const OPTIONS = ["content_disposition", "content_type", "process"];

/** The `sig` of a link: hex HMAC-SHA256 of key, exp and the options, one per line. */
export function linkSignature(secret, key, exp, options = {}) {
  key = key.startsWith("/") ? key.slice(1) : key; // the server strips one leading '/'
  const lines = [key, String(exp)];
  for (const name of OPTIONS) {
    if (name in options) lines.push(`${name}=${options[name]}`);
  }
  return createHmac("sha256", secret).update(lines.join("\n"), "utf8").digest("hex");
}

/** The path and query of a link, to append to the server's origin. */
export function signedLink(secret, key, exp, options = {}) {
  for (const name of Object.keys(options)) {
    if (!OPTIONS.includes(name)) throw new Error(`not a URL option: ${name}`);
  }
  const sig = linkSignature(secret, key, exp, options);
  key = key.startsWith("/") ? key.slice(1) : key;
  const dotSegment = key.split("/").some((part) => part === "." || part === "..");
  const path = dotSegment
    ? encodeURIComponent(key)
    : key.split("/").map(encodeURIComponent).join("/");
  const query = new URLSearchParams();
  for (const name of ["process", "content_type", "content_disposition"]) {
    if (name in options) query.append(name, options[name]);
  }
  query.append("exp", String(exp));
  query.append("sig", sig);
  return `/api/v1/images/${path}/proxy?${query}`;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [secret, exp, key, ...pairs] = process.argv.slice(2);
  const options = Object.fromEntries(
    pairs.map((pair) => [pair.slice(0, pair.indexOf("=")), pair.slice(pair.indexOf("=") + 1)]),
  );
  console.log(signedLink(secret, key, Number(exp), options));
}
