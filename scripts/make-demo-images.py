#!/usr/bin/env python3
"""Draws the demo's sample images (bins/server/demo/images/*.png), with no dependency
beyond the standard library: each is a 240x180 pattern with a number, written as a PNG by
hand (zlib + CRC). The images are the project's own work, dedicated to the public domain
(CC0 1.0, see bins/server/demo/images/LICENSE). Run from the repository root."""

import math
import struct
import zlib

W, H = 240, 180
OUT = "bins/server/demo/images"

# 3x5 digits, for the number in the corner.
DIGITS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001001001001", "8": "111101111101111",
    "9": "111101111001111",
}

PALETTES = [
    ((255, 94, 77), (255, 201, 71)), ((46, 134, 222), (72, 219, 251)),
    ((29, 209, 161), (16, 172, 132)), ((155, 89, 182), (241, 196, 15)),
    ((52, 73, 94), (149, 165, 166)), ((230, 126, 34), (211, 84, 0)),
    ((39, 174, 96), (241, 196, 15)), ((192, 57, 43), (142, 68, 173)),
]


def mix(a, b, t):
    return tuple(int(a[i] + (b[i] - a[i]) * t) for i in range(3))


def pixel(n, x, y):
    a, b = PALETTES[n % len(PALETTES)]
    kind = n % 4
    if kind == 0:  # diagonal gradient
        t = (x / W + y / H) / 2
    elif kind == 1:  # rings
        t = (math.sin(math.hypot(x - W / 2, y - H / 2) / 9) + 1) / 2
    elif kind == 2:  # waves
        t = (math.sin(x / 14 + math.sin(y / 19) * 2) + 1) / 2
    else:  # checks
        t = 0.2 if (x // 30 + y // 30) % 2 else 0.8
    return mix(a, b, t)


def label(n, x, y):
    """White digits, 6 px per cell, in the top-left corner."""
    text = f"{n:02d}"
    cell = 6
    for i, ch in enumerate(text):
        ox, oy = 12 + i * 4 * cell, 12
        cx, cy = (x - ox) // cell, (y - oy) // cell
        if 0 <= cx < 3 and 0 <= cy < 5 and x >= ox and y >= oy:
            return DIGITS[ch][cy * 3 + cx] == "1"
    return False


def png(n):
    rows = bytearray()
    for y in range(H):
        rows.append(0)
        for x in range(W):
            rows.extend((255, 255, 255) if label(n, x, y) else pixel(n, x, y))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(rows), 9)) + chunk(b"IEND", b""))


for n in range(1, 9):
    with open(f"{OUT}/sample-{n:02d}.png", "wb") as f:
        f.write(png(n))
