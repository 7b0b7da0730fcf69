//! Tests of image decoding: limits, corrupt input, Pillow conversion rules.
use super::*;
use crate::vision::test_util::read_fixture;

// ---- tiny PNG writer (stored deflate blocks) for crafted inputs ----

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = if data.is_empty() {
        vec![&[]]
    } else {
        data.chunks(65_535).collect()
    };
    for (i, blk) in blocks.iter().enumerate() {
        out.push(u8::from(i + 1 == blocks.len()));
        let len = blk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(blk);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

fn chunk(ty: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(ty);
    out.extend_from_slice(data);
    let mut crc_in = ty.to_vec();
    crc_in.extend_from_slice(data);
    out.extend_from_slice(&crc32(&crc_in).to_be_bytes());
    out
}

/// PNG with the given header fields, extra chunks before IDAT and raw (unfiltered) rows.
fn png(w: u32, h: u32, depth: u8, color: u8, extra: &[Vec<u8>], rows: &[Vec<u8>]) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[depth, color, 0, 0, 0]);
    out.extend(chunk(b"IHDR", &ihdr));
    for c in extra {
        out.extend_from_slice(c);
    }
    let raw: Vec<u8> = rows
        .iter()
        .flat_map(|r| std::iter::once(0u8).chain(r.iter().copied()))
        .collect();
    out.extend(chunk(b"IDAT", &zlib_stored(&raw)));
    out.extend(chunk(b"IEND", &[]));
    out
}

fn be16(vals: &[u16]) -> Vec<u8> {
    vals.iter().flat_map(|v| v.to_be_bytes()).collect()
}

fn rgb_triples(img: &RgbImage) -> Vec<[u8; 3]> {
    img.pixels().map(|p| p.0).collect()
}

fn decode(bytes: &[u8]) -> Result<RgbImage, VisionError> {
    decode_image(bytes, &VisionLimits::default())
}

// ---- fixtures ----

#[test]
fn decodes_fixture_pngs() {
    let img = decode(&read_fixture("inputs/img_landscape.png")).expect("landscape");
    assert_eq!(img.dimensions(), (80, 60));
    let img = decode(&read_fixture("inputs/img_big.png")).expect("big");
    assert_eq!(img.dimensions(), (300, 200));
    // Mode L: replicated to R = G = B.
    let img = decode(&read_fixture("inputs/img_gray.png")).expect("gray");
    assert_eq!(img.dimensions(), (64, 64));
    assert!(img.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
    assert!(img.pixels().any(|p| p.0[0] != img.get_pixel(0, 0).0[0]));
}

#[test]
fn decodes_fixture_jpeg_with_libjpeg() {
    let bytes = read_fixture("inputs/img_portrait.jpg");
    let img = decode(&bytes).expect("jpeg");
    assert_eq!(img.dimensions(), (50, 90));
    let direct = decode_jpeg_libjpeg(&bytes, &VisionLimits::default())
        .expect("libjpeg path")
        .expect("YCbCr is handled by libjpeg");
    assert_eq!(img, direct);
}

// ---- limits ----

#[test]
fn byte_limit() {
    let bytes = read_fixture("inputs/img_landscape.png");
    let limits = VisionLimits {
        max_image_bytes: 1000,
        ..VisionLimits::default()
    };
    match decode_image(&bytes, &limits) {
        Err(VisionError::TooManyBytes { size, limit }) => {
            assert_eq!((size, limit), (bytes.len(), 1000));
        }
        other => panic!("expected TooManyBytes, got {other:?}"),
    }
}

#[test]
fn pixel_limit_from_a_bomb_header() {
    // Header claims 100 000 x 100 000 RGB (30 GB decoded); the data is a single row.
    let bomb = png(100_000, 100_000, 8, 2, &[], &[vec![0u8; 30]]);
    match decode(&bomb) {
        Err(VisionError::TooManyPixels {
            width,
            height,
            limit,
        }) => {
            assert_eq!(
                (width, height, limit),
                (100_000, 100_000, DEFAULT_MAX_PIXELS)
            );
        }
        other => panic!("expected TooManyPixels, got {other:?}"),
    }
}

#[test]
fn jpeg_pixel_limit_is_checked_from_the_header() {
    // Patch the SOF0 frame size of the fixture to 60000 x 60000 (3.6 Gpx).
    let mut bytes = read_fixture("inputs/img_portrait.jpg");
    let sof = bytes
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("baseline SOF0 marker");
    bytes[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
    match decode(&bytes) {
        Err(VisionError::TooManyPixels {
            width: 60_000,
            height: 60_000,
            ..
        }) => {}
        other => panic!("expected TooManyPixels, got {other:?}"),
    }
}

#[test]
fn pixel_limit_on_real_images() {
    let limits = VisionLimits {
        max_pixels: 4000,
        ..VisionLimits::default()
    };
    for (file, dims) in [
        ("inputs/img_landscape.png", (80, 60)),
        ("inputs/img_portrait.jpg", (50, 90)),
    ] {
        match decode_image(&read_fixture(file), &limits) {
            Err(VisionError::TooManyPixels {
                width,
                height,
                limit: 4000,
            }) => {
                assert_eq!((width, height), dims);
            }
            other => panic!("{file}: expected TooManyPixels, got {other:?}"),
        }
    }
    // Exactly at the limit is accepted.
    let limits = VisionLimits {
        max_pixels: 80 * 60,
        ..VisionLimits::default()
    };
    assert!(decode_image(&read_fixture("inputs/img_landscape.png"), &limits).is_ok());
}

#[test]
fn default_limits() {
    let l = VisionLimits::default();
    assert_eq!(l.max_image_bytes, 20 * 1024 * 1024);
    assert_eq!(l.max_pixels, 40_000_000);
    assert_eq!(l.max_video_frames, DEFAULT_MAX_VIDEO_FRAMES);
}

// ---- bad input ----

#[test]
fn garbage_and_empty_input_are_unsupported() {
    for bytes in [
        &b""[..],
        b"hello world, not an image",
        &[0u8; 64],
        &[0xFF; 3],
    ] {
        match decode(bytes) {
            Err(VisionError::UnsupportedFormat(_)) => {}
            other => panic!("expected UnsupportedFormat, got {other:?}"),
        }
    }
}

#[test]
fn truncated_png_is_corrupt() {
    let bytes = read_fixture("inputs/img_landscape.png");
    for cut in [9, 20, 40, bytes.len() / 2, bytes.len() - 13] {
        match decode(&bytes[..cut]) {
            Err(VisionError::CorruptImage(_)) => {}
            other => panic!("cut at {cut}: expected CorruptImage, got {other:?}"),
        }
    }
}

#[test]
fn truncated_jpeg_is_corrupt() {
    let bytes = read_fixture("inputs/img_portrait.jpg");
    for cut in [3, 10, 100, 400, bytes.len() / 2, bytes.len() - 2] {
        match decode(&bytes[..cut]) {
            Err(VisionError::CorruptImage(_)) => {}
            other => panic!("cut at {cut}: expected CorruptImage, got {other:?}"),
        }
    }
}

#[test]
fn jpeg_structure_scan() {
    let bytes = read_fixture("inputs/img_portrait.jpg");
    assert!(jpeg_reaches_eoi(&bytes));
    let mut trailing = bytes.clone();
    trailing.extend_from_slice(b"trailing junk");
    assert!(jpeg_reaches_eoi(&trailing));
    assert!(!jpeg_reaches_eoi(&bytes[..bytes.len() - 2]));
    assert!(!jpeg_reaches_eoi(b"\xFF\xD8"));
    assert!(!jpeg_reaches_eoi(b"\xFF\xD8\xFF\xE0\x00\x01"));
    assert!(jpeg_reaches_eoi(b"\xFF\xD8\xFF\xD9"));
}

#[test]
fn corrupted_bytes_never_panic() {
    // Overwrite bytes all over the fixtures (headers, tables, entropy data) and truncate at
    // many points: every outcome must be Ok or a typed error, never a panic.
    for file in [
        "inputs/img_portrait.jpg",
        "inputs/img_landscape.png",
        "inputs/img_gray.png",
    ] {
        let bytes = read_fixture(file);
        let step = (bytes.len() / 97).max(1);
        for pos in (0..bytes.len()).step_by(step) {
            for val in [0x00u8, 0xFF, 0x7F, bytes[pos].wrapping_add(1)] {
                let mut b = bytes.clone();
                b[pos] = val;
                let _ = decode(&b);
            }
            let _ = decode(&bytes[..pos]);
        }
    }
}

#[test]
fn jpeg_with_trailing_garbage_still_decodes() {
    let mut bytes = read_fixture("inputs/img_portrait.jpg");
    let want = decode(&bytes).expect("jpeg");
    bytes.extend_from_slice(&[0u8; 17]);
    assert_eq!(decode(&bytes).expect("jpeg + trailing bytes"), want);
}

#[test]
fn zero_sized_png_is_an_error() {
    let b = png(0, 5, 8, 2, &[], &[]);
    assert!(decode(&b).is_err());
}

// ---- conversion to RGB (expectations from Pillow 11.3 `convert("RGB")`) ----

#[test]
fn gray16_is_clipped_like_pillow() {
    let vals = [0u16, 100, 255, 256, 1000, 65_535];
    let img = decode(&png(6, 1, 16, 0, &[], &[be16(&vals)])).expect("gray16");
    let want: Vec<[u8; 3]> = [0u8, 100, 255, 255, 255, 255]
        .iter()
        .map(|&v| [v; 3])
        .collect();
    assert_eq!(rgb_triples(&img), want);
}

#[test]
fn colour16_keeps_the_high_byte_like_pillow() {
    let vals = [
        0x0000u16, 0x00ff, 0x0100, 0x7f80, 0x80ff, 0xff7f, 0xffff, 0x1234,
    ];
    let want: Vec<[u8; 3]> = vals
        .iter()
        .map(|&v| [(v >> 8) as u8, ((v ^ 0xffff) >> 8) as u8, 0x12])
        .collect();
    let rgb: Vec<u16> = vals.iter().flat_map(|&v| [v, v ^ 0xffff, 0x1234]).collect();
    let img = decode(&png(8, 1, 16, 2, &[], &[be16(&rgb)])).expect("rgb16");
    assert_eq!(rgb_triples(&img), want);
    let rgba: Vec<u16> = vals
        .iter()
        .flat_map(|&v| [v, v ^ 0xffff, 0x1234, 0x8000])
        .collect();
    let img = decode(&png(8, 1, 16, 6, &[], &[be16(&rgba)])).expect("rgba16");
    assert_eq!(rgb_triples(&img), want);
    let la: Vec<u16> = vals.iter().flat_map(|&v| [v, 0x8000]).collect();
    let img = decode(&png(8, 1, 16, 4, &[], &[be16(&la)])).expect("la16");
    let want_la: Vec<[u8; 3]> = vals.iter().map(|&v| [(v >> 8) as u8; 3]).collect();
    assert_eq!(rgb_triples(&img), want_la);
}

#[test]
fn palette_alpha_and_low_bit_depths_like_pillow() {
    let plte = chunk(
        b"PLTE",
        &[10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120],
    );
    let trns = chunk(b"tRNS", &[0, 128]);
    let img = decode(&png(4, 1, 8, 3, &[plte, trns], &[vec![0, 1, 2, 3]])).expect("palette");
    assert_eq!(
        rgb_triples(&img),
        vec![[10, 20, 30], [40, 50, 60], [70, 80, 90], [100, 110, 120]]
    );
    // Gray + alpha: alpha dropped, no compositing.
    let img = decode(&png(3, 1, 8, 4, &[], &[vec![0, 0, 255, 0, 77, 128]])).expect("la8");
    assert_eq!(rgb_triples(&img), vec![[0; 3], [255; 3], [77; 3]]);
    // RGBA: alpha dropped.
    let img = decode(&png(2, 1, 8, 6, &[], &[vec![1, 2, 3, 0, 4, 5, 6, 200]])).expect("rgba8");
    assert_eq!(rgb_triples(&img), vec![[1, 2, 3], [4, 5, 6]]);
    // 2-bit gray scales to 0, 85, 170, 255; 1-bit to 0 / 255.
    let img = decode(&png(4, 1, 2, 0, &[], &[vec![0b0001_1011]])).expect("gray2");
    assert_eq!(rgb_triples(&img), vec![[0; 3], [85; 3], [170; 3], [255; 3]]);
    let img = decode(&png(8, 1, 1, 0, &[], &[vec![0b1011_0001]])).expect("gray1");
    let want: Vec<[u8; 3]> = [255u8, 0, 255, 255, 0, 0, 0, 255]
        .iter()
        .map(|&v| [v; 3])
        .collect();
    assert_eq!(rgb_triples(&img), want);
}

#[test]
fn other_formats_round_trip() {
    let src = RgbImage::from_fn(7, 5, |x, y| {
        image::Rgb([(x * 30) as u8, (y * 50) as u8, 99])
    });
    for format in [
        ImageFormat::Bmp,
        ImageFormat::Tiff,
        ImageFormat::WebP,
        ImageFormat::Png,
    ] {
        let mut buf = Cursor::new(Vec::new());
        src.write_to(&mut buf, format).expect("encode");
        let img = decode(buf.get_ref()).expect("decode");
        assert_eq!(img, src, "{format:?}");
    }
    let mut buf = Cursor::new(Vec::new());
    src.write_to(&mut buf, ImageFormat::Gif)
        .expect("encode gif");
    assert_eq!(decode(buf.get_ref()).expect("gif").dimensions(), (7, 5));
}

// ---- headers and decoding memory ----

#[test]
fn headers_give_the_decoding_memory_before_any_pixel_is_decoded() {
    let rgba8 = png(5, 4, 8, 6, &[], &vec![vec![7; 20]; 4]);
    let h = read_header(&rgba8, &VisionLimits::default()).expect("rgba8 header");
    assert_eq!((h.width, h.height, h.format), (5, 4, ImageFormat::Png));
    assert_eq!(
        h.decode_bytes,
        5 * 4 * 4 + 5 * 4 * 3,
        "samples + the RGB copy"
    );
    // 16-bit PNGs are reduced as they decode: only the RGB result is held.
    let rgb16 = png(5, 4, 16, 2, &[], &vec![vec![9; 30]; 4]);
    let h = read_header(&rgb16, &VisionLimits::default()).expect("rgb16 header");
    assert_eq!(h.decode_bytes, 5 * 4 * 3);
    let jpeg = read_fixture("inputs/img_portrait.jpg");
    let h = read_header(&jpeg, &VisionLimits::default()).expect("jpeg header");
    assert_eq!((h.width, h.height), (50, 90));
    assert_eq!(h.decode_bytes, 50 * 90 * 3);
    // Preparation adds the resize intermediate (tallest side x res x 3) and the crop.
    assert_eq!(
        h.prepare_bytes(32),
        50 * 90 * 3 + 90 * 32 * 3 + 32 * 32 * 15
    );
    // A header that announces 2^31 pixels is refused without allocating them.
    let bomb = png(1 << 16, 1 << 15, 16, 6, &[], &[]);
    assert!(matches!(
        read_header(&bomb, &VisionLimits::default()),
        Err(VisionError::TooManyPixels { .. })
    ));
}

#[test]
fn sixteen_bit_pngs_streamed_row_by_row_equal_the_whole_image_conversion() {
    let (w, h) = (37u32, 23u32);
    let sample = |x: u32, y: u32, c: u32| ((x * 2851 + y * 7919 + c * 104_729) % 65_536) as u16;
    let images = [
        DynamicImage::ImageLuma16(image::ImageBuffer::from_fn(w, h, |x, y| {
            image::Luma([sample(x, y, 0) % 700])
        })),
        DynamicImage::ImageLumaA16(image::ImageBuffer::from_fn(w, h, |x, y| {
            image::LumaA([sample(x, y, 0), sample(x, y, 1)])
        })),
        DynamicImage::ImageRgb16(image::ImageBuffer::from_fn(w, h, |x, y| {
            image::Rgb([sample(x, y, 0), sample(x, y, 1), sample(x, y, 2)])
        })),
        DynamicImage::ImageRgba16(image::ImageBuffer::from_fn(w, h, |x, y| {
            image::Rgba([sample(x, y, 0), sample(x, y, 1), sample(x, y, 2), 9])
        })),
    ];
    for img in images {
        let mut buf = Cursor::new(Vec::new());
        img.write_to(&mut buf, ImageFormat::Png).expect("encode");
        let header = read_header(buf.get_ref(), &VisionLimits::default()).expect("header");
        assert_eq!(header.plan, Plan::Png16Rows, "{:?}", img.color());
        let streamed = decode(buf.get_ref()).expect("streamed");
        assert_eq!(
            streamed,
            to_rgb_like_pillow(img.clone()),
            "{:?}",
            img.color()
        );
        // Truncated data is an error, never a short image.
        let cut = &buf.get_ref()[..buf.get_ref().len() * 2 / 3];
        assert!(decode(cut).is_err(), "{:?} truncated", img.color());
    }
}
