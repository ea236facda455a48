//! A minimal PNG writer and reader for 8-bit RGB, non-interlaced images, on the `flate2` the workspace
//! already builds (the `png` crate would switch on `std` features of `crc32fast` and `simd-adler32`
//! and so rebuild the burn/cubecl stack twice over). The writer is deterministic: one IHDR, one IDAT
//! (zlib, level 9, filter type 0 on every row), IEND.

use std::io::{Read as _, Write as _};

use flate2::Compression;
use flate2::Crc;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;

/// The eight bytes every PNG file starts with.
pub const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

/// A decoded image: size and `width × height × 3` RGB bytes, row by row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// RGB triplets, row-major.
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// Number of distinct colours (a blank canvas has one).
    pub fn distinct_colours(&self) -> usize {
        self.pixels
            .chunks_exact(3)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    }
}

/// Why bytes are not a PNG this module reads.
#[derive(Debug, thiserror::Error)]
pub enum PngError {
    /// Malformed or unsupported file.
    #[error("png: {0}")]
    Format(String),
    /// zlib failed.
    #[error("png: zlib: {0}")]
    Zlib(#[from] std::io::Error),
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) -> Result<(), PngError> {
    let length = u32::try_from(data.len())
        .map_err(|_| PngError::Format("chunk larger than 4 GiB".to_owned()))?;
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
    Ok(())
}

/// Encodes `rgb` (`width × height × 3` bytes) as a PNG file.
pub fn encode_rgb(width: u32, height: u32, rgb: &[u8]) -> Result<Vec<u8>, PngError> {
    let stride = width as usize * 3;
    if width == 0 || height == 0 || rgb.len() != stride * height as usize {
        return Err(PngError::Format(format!(
            "{} bytes are not a {width}×{height} RGB image",
            rgb.len()
        )));
    }
    let mut raw = Vec::with_capacity((stride + 1) * height as usize);
    for row in rgb.chunks_exact(stride) {
        raw.push(0); // filter type 0: the row as it is
        raw.extend_from_slice(row);
    }
    let mut zlib = ZlibEncoder::new(Vec::new(), Compression::best());
    zlib.write_all(&raw)?;
    let idat = zlib.finish()?;

    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    // Bit depth 8, colour type 2 (RGB), deflate, adaptive filtering, no interlace.
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);

    let mut out = Vec::with_capacity(idat.len() + 64);
    out.extend_from_slice(&SIGNATURE);
    chunk(&mut out, b"IHDR", &ihdr)?;
    chunk(&mut out, b"IDAT", &idat)?;
    chunk(&mut out, b"IEND", &[])?;
    Ok(out)
}

/// Decodes an 8-bit RGB, non-interlaced PNG (any of the five row filters), checking every chunk's
/// CRC: enough to read back and verify what [`encode_rgb`] wrote.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, PngError> {
    let format = |reason: &str| PngError::Format(reason.to_owned());
    let mut rest = bytes
        .strip_prefix(&SIGNATURE[..])
        .ok_or_else(|| format("no PNG signature"))?;
    let mut header: Option<(u32, u32)> = None;
    let mut idat = Vec::new();
    let mut ended = false;
    while !rest.is_empty() {
        if rest.len() < 12 {
            return Err(format("truncated chunk"));
        }
        let length = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if rest.len() < 12 + length {
            return Err(format("truncated chunk"));
        }
        let kind = &rest[4..8];
        let data = &rest[8..8 + length];
        let stored = &rest[8 + length..12 + length];
        let mut crc = Crc::new();
        crc.update(kind);
        crc.update(data);
        if crc.sum().to_be_bytes() != stored {
            return Err(PngError::Format(format!(
                "CRC mismatch in {} chunk",
                String::from_utf8_lossy(kind)
            )));
        }
        match kind {
            b"IHDR" => {
                if data.len() != 13 {
                    return Err(format("IHDR is not 13 bytes"));
                }
                if data[8..13] != [8, 2, 0, 0, 0] {
                    return Err(format("only 8-bit RGB, non-interlaced PNGs are supported"));
                }
                let width = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                let height = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
                header = Some((width, height));
            }
            b"IDAT" => idat.extend_from_slice(data),
            b"IEND" => {
                ended = true;
                rest = &rest[12 + length..];
                break;
            }
            _ => {}
        }
        rest = &rest[12 + length..];
    }
    if !ended || !rest.is_empty() {
        return Err(format("no IEND chunk at the end"));
    }
    let (width, height) = header.ok_or_else(|| format("no IHDR chunk"))?;
    let stride = width as usize * 3;
    let mut raw = Vec::new();
    ZlibDecoder::new(idat.as_slice()).read_to_end(&mut raw)?;
    if raw.len() != (stride + 1) * height as usize {
        return Err(PngError::Format(format!(
            "image data is {} bytes, a {width}×{height} RGB image needs {}",
            raw.len(),
            (stride + 1) * height as usize
        )));
    }
    let mut pixels = vec![0u8; stride * height as usize];
    for (row, line) in raw.chunks_exact(stride + 1).enumerate() {
        let (filter, line) = (line[0], &line[1..]);
        let (done, current) = pixels.split_at_mut(row * stride);
        let above = if row == 0 {
            None
        } else {
            Some(&done[(row - 1) * stride..])
        };
        let current = &mut current[..stride];
        for index in 0..stride {
            let left = if index >= 3 { current[index - 3] } else { 0 };
            let up = above.map_or(0, |above| above[index]);
            let up_left = match above {
                Some(above) if index >= 3 => above[index - 3],
                _ => 0,
            };
            let predicted = match filter {
                0 => 0,
                1 => left,
                2 => up,
                3 => ((u16::from(left) + u16::from(up)) / 2) as u8,
                4 => paeth(left, up, up_left),
                other => return Err(PngError::Format(format!("unknown row filter {other}"))),
            };
            current[index] = line[index].wrapping_add(predicted);
        }
    }
    Ok(RgbImage {
        width,
        height,
        pixels,
    })
}

fn paeth(left: u8, up: u8, up_left: u8) -> u8 {
    let estimate = i16::from(left) + i16::from(up) - i16::from(up_left);
    let (to_left, to_up, to_up_left) = (
        (estimate - i16::from(left)).abs(),
        (estimate - i16::from(up)).abs(),
        (estimate - i16::from(up_left)).abs(),
    );
    if to_left <= to_up && to_left <= to_up_left {
        left
    } else if to_up <= to_up_left {
        up
    } else {
        up_left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let (width, height) = (5u32, 4u32);
        let rgb: Vec<u8> = (0..width * height * 3)
            .map(|i| (i * 37 % 251) as u8)
            .collect();
        let bytes = encode_rgb(width, height, &rgb).unwrap();
        assert_eq!(&bytes[..8], &SIGNATURE);
        let image = decode_rgb(&bytes).unwrap();
        assert_eq!((image.width, image.height), (width, height));
        assert_eq!(image.pixels, rgb);
        assert_eq!(
            encode_rgb(width, height, &rgb).unwrap(),
            bytes,
            "deterministic"
        );

        let mut damaged = bytes.clone();
        let last_idat_byte = damaged.len() - 12 - 5;
        damaged[last_idat_byte] ^= 0x55;
        assert!(
            decode_rgb(&damaged)
                .unwrap_err()
                .to_string()
                .contains("CRC mismatch")
        );
        assert!(decode_rgb(&bytes[..bytes.len() - 12]).is_err(), "no IEND");
        assert!(encode_rgb(width, height, &rgb[1..]).is_err());
    }

    /// A hand-made 2×2 image whose rows use the Sub and Paeth filters (what other encoders write).
    #[test]
    fn reads_filtered_rows() {
        let raw = [
            1u8, 10, 20, 30, 5, 5, 5, // Sub: (10,20,30), (15,25,35)
            4, 1, 1, 1, 2, 2, 2, // Paeth: above (10,20,30) → (11,21,31); then (17,27,37)
        ];
        let mut zlib = ZlibEncoder::new(Vec::new(), Compression::default());
        zlib.write_all(&raw).unwrap();
        let mut bytes = SIGNATURE.to_vec();
        chunk(
            &mut bytes,
            b"IHDR",
            &[0, 0, 0, 2, 0, 0, 0, 2, 8, 2, 0, 0, 0],
        )
        .unwrap();
        chunk(&mut bytes, b"IDAT", &zlib.finish().unwrap()).unwrap();
        chunk(&mut bytes, b"IEND", &[]).unwrap();
        let image = decode_rgb(&bytes).unwrap();
        assert_eq!(
            image.pixels,
            [10, 20, 30, 15, 25, 35, 11, 21, 31, 17, 27, 37]
        );
    }
}
