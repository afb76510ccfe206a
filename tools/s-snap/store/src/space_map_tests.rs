//! Unit tests of the bitmap bit ranges against one bit at a time.

use crate::store::testing::{count_bits, flip_bits, flip_error, BM_BITS};

fn bit(b: &[u8], i: u64) -> bool {
    b[BM_BITS + (i / 8) as usize] & (1 << (i % 8)) != 0
}

#[test]
fn ranges_count_and_flip_like_single_bits() {
    let mut b = std::vec![0u8; 4096];
    let mut rng = crate::model_test::Rng(7);
    // Every start in two bytes and every length across up to three more.
    for bit0 in 0..16u64 {
        for len in 1..=24u64 {
            for v in b.iter_mut() {
                *v = rng.next() as u8;
            }
            let want = (bit0..bit0 + len).filter(|&i| bit(&b, i)).count() as u64;
            assert_eq!(count_bits(&b, bit0, len).unwrap(), want);
            // Clear the range bit by bit, then set it as a range, then clear it.
            for i in bit0..bit0 + len {
                b[BM_BITS + (i / 8) as usize] &= !(1 << (i % 8));
            }
            let before = b.clone();
            flip_bits(&mut b, bit0, len, true, 1000).unwrap();
            for i in 0..(bit0 + len + 16) {
                let inside = (bit0..bit0 + len).contains(&i);
                assert_eq!(bit(&b, i), inside || bit(&before, i), "bit {i}");
            }
            assert_eq!(count_bits(&b, bit0, len).unwrap(), len);
            flip_bits(&mut b, bit0, len, false, 1000).unwrap();
            assert_eq!(b, before);
        }
    }
}

#[test]
fn a_bit_already_in_the_state_is_named() {
    let mut b = std::vec![0u8; 4096];
    // Bit 13 already set: setting 5..25 names block first + 8.
    b[BM_BITS + 1] = 1 << 5;
    match flip_bits(&mut b, 5, 20, true, 100) {
        Err(e) => assert_eq!(e, flip_error(true, 108)),
        Ok(()) => panic!("a set bit was set again"),
    }
    // Clearing 0..4 of a clear byte names block first.
    let mut c = std::vec![0u8; 4096];
    match flip_bits(&mut c, 0, 4, false, 50) {
        Err(e) => assert_eq!(e, flip_error(false, 50)),
        Ok(()) => panic!("a clear bit was cleared again"),
    }
}
