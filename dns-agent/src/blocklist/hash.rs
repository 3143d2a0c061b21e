//! The fixed, seeded 64-bit hashes: of names (ASCII case-insensitive, labels folded right to left, so a parent's
//! hash is an intermediate state) and of bytes (cache file names: must stay stable). Must not know list formats,
//! the set or files.

pub(super) const SEED: u64 = 0x5354_5241_5441_424c; // "STRATABL"
const LABEL_END: u64 = 0x9e37_79b9_7f4a_7c15;

/// murmur3's 64-bit finalizer: a bijection with full avalanche.
#[inline]
pub(super) fn fmix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Up to 8 bytes, little-endian, zero-padded; with `fold_case`, `A`–`Z` become `a`–`z` and nothing else changes.
#[inline]
fn word(chunk: &[u8], fold_case: bool) -> u64 {
    let w = match <[u8; 8]>::try_from(chunk) {
        Ok(full) => u64::from_le_bytes(full),
        Err(_) => {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            u64::from_le_bytes(b)
        }
    };
    if fold_case {
        ascii_lower8(w)
    } else {
        w
    }
}

/// `to_ascii_lowercase` on the 8 bytes of a word at once (SWAR). Per byte, on its low 7 bits (no carry can cross
/// into the next byte): bit 7 of `+0x3f` is set from `A` (0x41) up, of `+0x25` from `[` (0x5b) up; a byte that
/// is in `A..=Z` and has bit 7 clear gets 0x20.
#[inline]
fn ascii_lower8(w: u64) -> u64 {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let b = w & LOW7;
    let from_a = b + 0x3f3f_3f3f_3f3f_3f3f;
    let past_z = b + 0x2525_2525_2525_2525;
    let upper = from_a & !past_z & !w & HIGH;
    w | (upper >> 2)
}

/// Folds one label (ASCII case-insensitively) into the hash state. A name's hash is its labels folded right to left,
/// so the hash of every parent domain is an intermediate state: `is_blocked` hashes each byte once.
#[inline]
pub(super) fn fold_label(mut h: u64, label: &[u8]) -> u64 {
    for chunk in label.chunks(8) {
        h = fmix(h ^ word(chunk, true));
    }
    fmix(h ^ LABEL_END ^ label.len() as u64)
}

/// Hash of a whole name (case-insensitive, labels right to left).
pub(super) fn hash_name(name: &str) -> u64 {
    name.as_bytes().rsplit(|&b| b == b'.').fold(SEED, fold_label)
}

/// Case-sensitive hash of arbitrary bytes (cache file names).
pub(super) fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = SEED;
    for chunk in bytes.chunks(8) {
        h = fmix(h ^ word(chunk, false));
    }
    fmix(h ^ LABEL_END ^ bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_folds_exactly_ascii_uppercase() {
        for b in 0..=255u8 {
            for pos in 0..8 {
                let mut chunk = [b'x'; 8];
                chunk[pos] = b;
                let mut want = chunk;
                want.iter_mut().for_each(|c| *c = c.to_ascii_lowercase());
                assert_eq!(word(&chunk, true), u64::from_le_bytes(want), "byte {b:#x} at {pos}");
                assert_eq!(word(&chunk, false), u64::from_le_bytes(chunk));
                assert_eq!(word(&chunk[..pos], true), word(&want[..pos], false));
            }
        }
    }
}
