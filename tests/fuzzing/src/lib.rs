//! Generated inputs for the parsers of untrusted input, for tests in the host and the
//! guest workspaces alike: random bytes, and valid examples mutated (bytes flipped,
//! inserted, removed, repeated, spliced with another example), as a fuzzer's havoc
//! stage does without coverage feedback.
//!
//! How many inputs each parser gets comes from `SUPERPEER_FUZZ_INPUTS` (`just fuzz`
//! sets a million), else a short run that `just test` can afford. A parser that panics
//! fails the run, naming the input in hex so it can be replayed.

use std::panic::{AssertUnwindSafe, catch_unwind};

/// Inputs per parser: `SUPERPEER_FUZZ_INPUTS`, else `default`.
pub fn inputs(default: u64) -> u64 {
    std::env::var("SUPERPEER_FUZZ_INPUTS").ok().and_then(|n| n.parse().ok()).unwrap_or(default)
}

/// A small, fast generator (xorshift64*): reproducible from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Bytes worth trying: the examples' own, and those parsers treat specially.
const INTERESTING: &[u8] = b"\0\x01\x7f\x80\xff\n\r\t \"'\\{}[]:,=#?&%/@.-_~0123456789";

/// One input: random bytes now and then, otherwise an example with a few mutations.
pub fn generate(rng: &mut Rng, examples: &[Vec<u8>]) -> Vec<u8> {
    if examples.is_empty() || rng.below(8) == 0 {
        let len = rng.below(512);
        return (0..len).map(|_| rng.next_u64() as u8).collect();
    }
    let mut input = examples[rng.below(examples.len())].clone();
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(input.len() + 1);
        match rng.below(7) {
            0 if !input.is_empty() => {
                let at = at.min(input.len() - 1);
                input[at] ^= 1 << rng.below(8);
            }
            1 => input.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
            2 => input.insert(at, rng.next_u64() as u8),
            3 if !input.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(input.len());
                input.drain(at.min(end)..end);
            }
            4 if !input.is_empty() => {
                let start = rng.below(input.len());
                let end = (start + 1 + rng.below(64)).min(input.len());
                let piece = input[start..end].to_vec();
                let times = 1 + rng.below(4);
                for _ in 0..times {
                    input.splice(at..at, piece.iter().copied());
                }
            }
            5 => {
                let other = &examples[rng.below(examples.len())];
                let from = rng.below(other.len() + 1);
                input.splice(at.., other[from..].iter().copied());
            }
            _ if !input.is_empty() => {
                let at = at.min(input.len() - 1);
                input[at] = INTERESTING[rng.below(INTERESTING.len())];
            }
            _ => {}
        }
    }
    input
}

/// Runs `parse` on `count` generated inputs; panics naming the first input it crashed
/// on. Returns the line to print: the parser's name and the inputs it took.
pub fn run(name: &str, examples: &[Vec<u8>], count: u64, mut parse: impl FnMut(&[u8])) -> String {
    let mut rng =
        Rng::new(0x5eed ^ name.bytes().fold(0u64, |h, b| h.wrapping_mul(31) ^ u64::from(b)));
    for example in examples {
        check(name, example, &mut parse);
    }
    for _ in 0..count {
        let input = generate(&mut rng, examples);
        check(name, &input, &mut parse);
    }
    format!("fuzz {name}: {} inputs, no crash", count + examples.len() as u64)
}

fn check(name: &str, input: &[u8], parse: &mut impl FnMut(&[u8])) {
    if catch_unwind(AssertUnwindSafe(|| parse(input))).is_err() {
        let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
        panic!("fuzz {name}: crashed on an input of {} bytes: {hex}", input.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_reproducible_and_varied() {
        let examples = vec![b"#EXTM3U\n#EXTINF:2,\nseg.ts\n".to_vec()];
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let first: Vec<Vec<u8>> = (0..100).map(|_| generate(&mut a, &examples)).collect();
        let again: Vec<Vec<u8>> = (0..100).map(|_| generate(&mut b, &examples)).collect();
        assert_eq!(first, again);
        let distinct: std::collections::HashSet<&Vec<u8>> = first.iter().collect();
        assert!(distinct.len() > 90);
    }

    #[test]
    fn a_crash_names_its_input() {
        let crashed = catch_unwind(|| {
            run("demo", &[b"ab".to_vec()], 1000, |input| assert!(!input.contains(&b'z')))
        });
        assert!(crashed.is_err());
    }
}
