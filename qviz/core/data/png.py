"""A small PNG decoder in numpy and zlib, so that PNG data sets work without Pillow."""

from __future__ import annotations

import struct
import zlib

import numpy as np

from qviz.core.errors import QvizError

__all__ = ["decode_png"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def decode_png(data: bytes) -> np.ndarray:
    """Decode a non-interlaced PNG to uint8 (H, W, C), or uint16 for 16-bit images.

    A small pure numpy/zlib reader so that PNG data sets work without Pillow. Palette images
    are expanded to RGB(A); 1/2/4-bit grayscale is scaled to 0..255.
    """
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError("not a PNG file")
    pos = len(_PNG_SIGNATURE)
    header: tuple[int, ...] | None = None
    palette: np.ndarray | None = None
    alpha: bytes | None = None
    idat: list[bytes] = []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length:
            raise ValueError("truncated PNG")
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = np.frombuffer(body, np.uint8).reshape(-1, 3)
        elif kind == b"tRNS":
            alpha = body
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None or not idat:
        raise ValueError("PNG without header or image data")
    width, height, depth, color, _compression, _filter, interlace = header
    if interlace:
        raise QvizError("interlaced PNGs need Pillow: pip install pillow")
    if color not in _PNG_CHANNELS or depth not in (1, 2, 4, 8, 16):
        raise ValueError(f"unsupported PNG colour type {color} / bit depth {depth}")
    channels = _PNG_CHANNELS[color]
    bits_per_pixel = channels * depth
    stride = (width * bits_per_pixel + 7) // 8
    bpp = max(1, bits_per_pixel // 8)  # filter unit: bytes per complete pixel
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8)
    if raw.size < height * (stride + 1):
        raise ValueError("truncated PNG image data")
    rows = raw[: height * (stride + 1)].reshape(height, stride + 1)
    out = np.empty((height, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:]
        if kind == 0:
            cur = line.copy()
        elif kind == 1:  # Sub: running sum per byte lane, modulo 256
            cur = _unfilter_sub(line, bpp)
        elif kind == 2:  # Up
            cur = line + prev
        elif kind == 3:  # Average: depends on the byte just decoded, so sequential
            cur = _unfilter_sequential(line, prev, bpp, paeth=False)
        elif kind == 4:  # Paeth
            cur = _unfilter_sequential(line, prev, bpp, paeth=True)
        else:
            raise ValueError(f"bad PNG filter type {kind}")
        out[y] = cur
        prev = cur
    pixels: np.ndarray
    if depth == 16:
        pixels = out.view(">u2").astype(np.uint16).reshape(height, width, channels)
    elif depth == 8:
        pixels = out.reshape(height, width, channels)
    else:
        bits = np.unpackbits(out, axis=1)[:, : width * depth].reshape(height, width, depth)
        weights = (1 << np.arange(depth - 1, -1, -1)).astype(np.uint8)
        values = (bits * weights).sum(axis=2).astype(np.uint8)
        if color == 0:
            values = (values.astype(np.uint16) * 255 // ((1 << depth) - 1)).astype(np.uint8)
        pixels = values[:, :, None]
    if color == 3:
        if palette is None:
            raise ValueError("palette PNG without a palette")
        index = pixels[:, :, 0]
        rgb = palette[np.minimum(index, len(palette) - 1)]
        if alpha is not None:
            table = np.full(len(palette), 255, np.uint8)
            table[: len(alpha)] = np.frombuffer(alpha[: len(palette)], np.uint8)
            pixels = np.concatenate([rgb, table[index][:, :, None]], axis=2)
        else:
            pixels = rgb
    return pixels


def _unfilter_sub(line: np.ndarray, bpp: int) -> np.ndarray:
    n = line.size
    pad = (-n) % bpp
    lanes = np.concatenate([line, np.zeros(pad, np.uint8)]).reshape(-1, bpp)
    return np.cumsum(lanes, axis=0, dtype=np.uint8).reshape(-1)[:n]


def _unfilter_sequential(
    line: np.ndarray, prev: np.ndarray, bpp: int, *, paeth: bool
) -> np.ndarray:
    cur = bytearray(line.tobytes())
    up = prev.tobytes()
    for i in range(len(cur)):
        left = cur[i - bpp] if i >= bpp else 0
        above = up[i]
        if paeth:
            upper_left = up[i - bpp] if i >= bpp else 0
            p = left + above - upper_left
            pa, pb, pc = abs(p - left), abs(p - above), abs(p - upper_left)
            pred = left if pa <= pb and pa <= pc else (above if pb <= pc else upper_left)
        else:
            pred = (left + above) >> 1
        cur[i] = (cur[i] + pred) & 0xFF
    return np.frombuffer(bytes(cur), np.uint8)


