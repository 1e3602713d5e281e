//! `superpeer-afl <target>`: one of superpeer's fuzz targets (the host's in
//! `tests/fuzz_targets`, the default policy's in `guest/pml/tests/targets`) under
//! AFL++, which feeds it inputs and follows the coverage they reach.
//! `superpeer-afl --seeds <dir>` writes each target's valid examples to
//! `<dir>/<target>/`, for AFL++ to start from. `just fuzz` does both.

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::path::Path;

#[path = "../../fuzz_targets/mod.rs"]
mod host;
#[path = "../../../guest/pml/tests/targets/mod.rs"]
mod policy;

fn write_seeds(dir: &Path, name: &str, examples: &[Vec<u8>]) -> std::io::Result<()> {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir)?;
    for (n, example) in examples.iter().enumerate() {
        std::fs::write(dir.join(n.to_string()), example)?;
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, dir] if flag == "--seeds" => {
            for target in &policy::TARGETS {
                write_seeds(Path::new(dir), target.name, &(target.examples)())?;
            }
            for target in &host::TARGETS {
                write_seeds(Path::new(dir), target.name, &(target.start)().examples)?;
            }
            Ok(())
        }
        [name] => {
            if let Some(target) = policy::target(name) {
                afl::fuzz!(|data: &[u8]| (target.check)(data));
            } else if let Some(target) = host::target(name) {
                // Started once (a runtime, a worker's data plane) and fed every input.
                let check = AssertUnwindSafe(RefCell::new((target.start)().check));
                afl::fuzz!(|data: &[u8]| (check.borrow_mut())(data));
            } else {
                return Err(std::io::Error::other(format!("no fuzz target named {name}")));
            }
            Ok(())
        }
        _ => Err(std::io::Error::other("usage: superpeer-afl <target> | --seeds <dir>")),
    }
}
