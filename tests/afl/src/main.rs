//! `superpeer-afl <target>`: one of the default policy's fuzz targets
//! (`guest/pml/tests/targets`) under AFL++, which feeds it inputs and follows the
//! coverage they reach. `superpeer-afl --seeds <dir>` writes each target's valid
//! examples to `<dir>/<target>/`, for AFL++ to start from. `just fuzz` does both.

#[path = "../../../guest/pml/tests/targets/mod.rs"]
mod targets;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, dir] if flag == "--seeds" => {
            for target in &targets::TARGETS {
                let dir = std::path::Path::new(dir).join(target.name);
                std::fs::create_dir_all(&dir)?;
                for (n, example) in (target.examples)().iter().enumerate() {
                    std::fs::write(dir.join(n.to_string()), example)?;
                }
            }
            Ok(())
        }
        [name] => {
            let Some(target) = targets::target(name) else {
                return Err(std::io::Error::other(format!("no fuzz target named {name}")));
            };
            afl::fuzz!(|data: &[u8]| (target.check)(data));
            Ok(())
        }
        _ => Err(std::io::Error::other("usage: superpeer-afl <target> | --seeds <dir>")),
    }
}
