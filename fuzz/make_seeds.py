#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets into fuzz/corpus/<target>/.

Needs Pillow (scripts/install-fuzz-tools puts it in .tools/fuzz/venv). Deterministic: the same
Pillow version writes the same files. Every seed is a few KB at most, so that one execution of a
target stays fast; the fixtures of tests/data/tiny/inputs/ that are small enough are copied too.

    .tools/fuzz/venv/bin/python fuzz/make_seeds.py
"""

import base64
import io
import json
import struct
import sys
import zlib
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
FIXTURES = ROOT / "tests" / "data" / "tiny" / "inputs"
MAX_SEED_BYTES = 20_000


def gradient(mode, w, h):
    """A deterministic test picture: RGB gradients with a diagonal, converted to `mode`."""
    img = Image.new("RGB", (w, h))
    img.putdata(
        [
            ((x * 255) // max(w - 1, 1), (y * 255) // max(h - 1, 1), 255 if x == y else (x * y) % 256)
            for y in range(h)
            for x in range(w)
        ]
    )
    if mode == "RGB":
        return img
    if mode == "P":
        return img.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    if mode in ("RGBA", "LA"):
        base = img.convert(mode[:-1])
        alpha = Image.new("L", (w, h))
        alpha.putdata([(x * 40 + y * 7) % 256 for y in range(h) for x in range(w)])
        base.putalpha(alpha)
        return base
    if mode == "I;16":
        g = Image.new("I;16", (w, h))
        g.putdata([(x * 4099 + y * 257) % 65536 for y in range(h) for x in range(w)])
        return g
    return img.convert(mode)


def encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def png16(w, h, color_type, channels, interlace=0):
    """A 16-bit PNG written by hand (Pillow writes 16-bit PNGs for gray only)."""
    rows = []
    for y in range(h):
        row = bytearray([0])
        for x in range(w):
            for c in range(channels):
                row += struct.pack(">H", (x * 3001 + y * 1009 + c * 20011) % 65536)
        rows.append(bytes(row))
    if interlace:
        # Adam7: the passes of a tiny image, each with its own filter bytes.
        passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
        raw = bytearray()
        bpp = 2 * channels
        for x0, y0, dx, dy in passes:
            xs = list(range(x0, w, dx))
            if not xs:
                continue
            for y in range(y0, h, dy):
                raw.append(0)
                for x in xs:
                    raw += rows[y][1 + x * bpp : 1 + (x + 1) * bpp]
        data = bytes(raw)
    else:
        data = b"".join(rows)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, interlace)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(data, 9))
        + png_chunk(b"IEND", b"")
    )


def images():
    """name -> encoded bytes, one or more per supported format."""
    out = {}
    g = gradient
    out["png_gray8.png"] = encode(g("L", 12, 9), "PNG")
    out["png_gray1.png"] = encode(g("1", 13, 7), "PNG")
    out["png_gray16.png"] = encode(g("I;16", 10, 6), "PNG")
    out["png_gray_alpha8.png"] = encode(g("LA", 9, 7), "PNG")
    out["png_rgb8.png"] = encode(g("RGB", 14, 10), "PNG")
    out["png_rgba8.png"] = encode(g("RGBA", 11, 8), "PNG")
    out["png_palette.png"] = encode(g("P", 12, 12), "PNG")
    out["png_palette_trns.png"] = encode(g("P", 8, 5), "PNG", transparency=3)
    out["png_rgb16.png"] = png16(7, 5, 2, 3)
    out["png_rgba16.png"] = png16(6, 4, 6, 4)
    out["png_gray_alpha16.png"] = png16(5, 5, 4, 2)
    out["png_rgb16_interlaced.png"] = png16(9, 9, 2, 3, interlace=1)
    out["jpeg_baseline.jpg"] = encode(g("RGB", 24, 16), "JPEG", quality=90)
    out["jpeg_progressive.jpg"] = encode(g("RGB", 17, 11), "JPEG", quality=75, progressive=True)
    out["jpeg_444_restart.jpg"] = encode(g("RGB", 16, 16), "JPEG", quality=95, subsampling=0, restart_marker_blocks=1)
    out["jpeg_gray.jpg"] = encode(g("L", 15, 9), "JPEG", quality=80)
    out["jpeg_cmyk.jpg"] = encode(g("CMYK", 8, 8), "JPEG", quality=85)
    out["gif_static.gif"] = encode(g("P", 12, 8), "GIF")
    frames = [g("P", 10, 6), g("P", 10, 6).transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    out["gif_animated.gif"] = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out["webp_lossy.webp"] = encode(g("RGB", 16, 12), "WEBP", quality=70)
    out["webp_lossless_alpha.webp"] = encode(g("RGBA", 10, 7), "WEBP", lossless=True)
    out["bmp_rgb24.bmp"] = encode(g("RGB", 9, 7), "BMP")
    out["bmp_palette8.bmp"] = encode(g("P", 8, 6), "BMP")
    out["bmp_gray1.bmp"] = encode(g("1", 16, 4), "BMP")
    out["tiff_rgb.tif"] = encode(g("RGB", 8, 6), "TIFF")
    out["tiff_lzw_rgba.tif"] = encode(g("RGBA", 7, 5), "TIFF", compression="tiff_lzw")
    out["tiff_gray16.tif"] = encode(g("I;16", 6, 6), "TIFF")
    return {k: v for k, v in out.items() if v is not None}


def video_json(frames, indent=None):
    return json.dumps([base64.b64encode(f).decode() for f in frames], indent=indent).encode()


def videos(imgs):
    out = {}
    out["one_png_frame.json"] = video_json([imgs["png_rgb8.png"]])
    out["three_jpeg_frames.json"] = video_json(
        [imgs["jpeg_baseline.jpg"], imgs["jpeg_progressive.jpg"], imgs["jpeg_gray.jpg"]]
    )
    seven = [imgs[k] for k in ("png_gray8.png", "png_palette.png", "gif_static.gif", "webp_lossy.webp",
                               "bmp_rgb24.bmp", "tiff_rgb.tif", "png_rgb16.png")]
    out["seven_mixed_frames.json"] = video_json(seven)
    # Base64 with line breaks and without padding: both accepted by the worker.
    wrapped = base64.encodebytes(imgs["png_gray16.png"]).decode()
    unpadded = base64.b64encode(imgs["bmp_palette8.bmp"]).decode().rstrip("=")
    out["wrapped_and_unpadded.json"] = json.dumps([wrapped, unpadded]).encode()
    out["empty_list.json"] = b"[]"
    return out


def tokenizer_seeds():
    out = {}
    out["text_prompt.txt"] = "User: What is in the image?\nBot: a red cat on the grass.".encode()
    out["text_specials.txt"] = "<s> describe this photo </s>[PAD]<unk>  how many people?".encode()
    out["text_unicode.txt"] = "Ünïcödé ▁ 日本語 🐱\u001c\u00a0tab\there".encode()
    out["text_invalid_utf8.bin"] = b"caf\xc3 \xff\xfe bot\xe2\x82"
    # flags byte then little-endian u32 ids: bos, pieces, byte pieces (UTF-8 of 'é' and a lone
    # continuation byte), eos, pad and a few ids past the vocabulary.
    ids = [1, 300, 310, 320, 3 + 0xC3, 3 + 0xA9, 3 + 0x80, 400, 2, 401, 70000, 0]
    out["ids_skip_special.bin"] = bytes([1]) + b"".join(struct.pack("<I", i) for i in ids)
    out["ids_keep_special.bin"] = bytes([0]) + b"".join(struct.pack("<I", i) for i in ids)
    out["ids_raw.bin"] = bytes([2]) + b"".join(struct.pack("<I", i) for i in [1, 2**32 - 1, 259, 2**31, 5])
    return out


# --- protobuf (lynx.v1.GenerateRequest), written by hand --------------------------------------


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(num, n):
    return varint(num << 3) + varint(n)


def field_bytes(num, data):
    return varint(num << 3 | 2) + varint(len(data)) + data


def field_float(num, x):
    return varint(num << 3 | 5) + struct.pack("<f", x)


def generate_request(images=(), video=None, instruction="", params=b"", priority=0, request_id=""):
    msg = b"".join(field_bytes(1, field_bytes(1, img)) for img in images)
    if video is not None:
        msg += field_bytes(2, b"".join(field_bytes(1, f) for f in video))
    if instruction:
        msg += field_bytes(3, instruction.encode())
    if params:
        msg += field_bytes(4, params)
    if priority:
        msg += field_varint(5, priority)
    if request_id:
        msg += field_bytes(6, request_id.encode())
    return msg


def requests(imgs):
    out = {}
    out["text_only.pb"] = generate_request(instruction="What is in the image?")
    out["one_image.pb"] = generate_request(images=[imgs["png_rgb8.png"]], instruction="Describe this picture.")
    out["two_images_beam.pb"] = generate_request(
        images=[imgs["jpeg_baseline.jpg"], imgs["webp_lossy.webp"]],
        instruction="Which one is red?",
        params=field_varint(1, 2) + field_varint(2, 8) + field_varint(3, 3),
        priority=3,
        request_id="seed-2",
    )
    sample = (
        field_varint(1, 3)
        + field_float(4, 0.7)
        + field_varint(5, 5)
        + field_float(6, 0.9)
        + field_varint(7, 42)
        + field_bytes(8, b"\n")
        + field_bytes(8, "Bot:".encode())
    )
    out["video_sample.pb"] = generate_request(
        video=[imgs["png_gray8.png"], imgs["gif_static.gif"], imgs["bmp_rgb24.bmp"]],
        instruction="What happens in the video?",
        params=sample,
        priority=1,
    )
    out["greedy_low_priority.pb"] = generate_request(
        images=[imgs["png_rgb16.png"]], instruction="colors?", params=field_varint(1, 1), priority=1
    )
    return out


def write(target, files):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    for name, data in sorted(files.items()):
        assert len(data) < MAX_SEED_BYTES, f"{target}/{name} is {len(data)} bytes"
        (d / name).write_bytes(data)
    print(f"{target}: {len(files)} seeds, {sum(map(len, files.values()))} bytes")


def main():
    imgs = images()
    fixtures = {p.name: p.read_bytes() for p in sorted(FIXTURES.iterdir())}
    image_seeds = dict(imgs)
    for name in ("img_gray.png", "img_portrait.jpg"):
        image_seeds["fixture_" + name] = fixtures[name]
    write("image", image_seeds)
    video_seeds = videos(imgs)
    video_seeds["fixture_video3.json"] = fixtures["video3.json"]
    write("video", video_seeds)
    write("tokenizer_decode", tokenizer_seeds())
    write("request", requests(imgs))


if __name__ == "__main__":
    sys.exit(main())
