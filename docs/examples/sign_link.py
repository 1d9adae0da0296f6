"""Signed links to an image-url server: the reference implementation in Python.

Usage: python3 sign_link.py SECRET EXP KEY [NAME=VALUE ...]
prints the link's path and query, e.g.
/api/v1/images/images/cat%201.jpg/proxy?process=...&exp=1700003600&sig=...

Only the standard library. See docs/security.md for the format.
"""

import hashlib
import hmac
import sys
from urllib.parse import quote, urlencode

# URL options in the order they are signed (alphabetical).
OPTIONS = ("content_disposition", "content_type", "process")


def link_signature(secret: str, key: str, exp: int, options: dict) -> str:
    """The `sig` of a link: hex HMAC-SHA256 of key, exp and the options, one per line."""
    key = key[1:] if key.startswith("/") else key  # the server strips one leading '/'
    lines = [key, str(exp)]
    for name in OPTIONS:
        if name in options:
            lines.append(f"{name}={options[name]}")
    message = "\n".join(lines).encode("utf-8")
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signed_link(secret: str, key: str, exp: int, options: dict) -> str:
    """The path and query of a link, to append to the server's origin."""
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise ValueError(f"not URL options: {sorted(unknown)}")
    sig = link_signature(secret, key, exp, options)
    key = key[1:] if key.startswith("/") else key
    dot_segment = any(part in (".", "..") for part in key.split("/"))
    path = quote(key, safe="" if dot_segment else "/")
    query = [(name, options[name]) for name in ("process", "content_type", "content_disposition") if name in options]
    query += [("exp", str(exp)), ("sig", sig)]
    return f"/api/v1/images/{path}/proxy?{urlencode(query)}"


if __name__ == "__main__":
    secret, exp, key, *pairs = sys.argv[1:]
    print(signed_link(secret, key, int(exp), dict(p.split("=", 1) for p in pairs)))
