//! Test component that is a valid component but exports another world, with a `handle`
//! of the wrong type: loading it as a policy must fail the type check.

wit_bindgen::generate!({
    inline: r#"
        package test:elsewhere;
        world elsewhere {
            export handle: func(events: list<string>) -> u32;
            export describe: func() -> string;
        }
    "#,
});

struct Elsewhere;

impl Guest for Elsewhere {
    fn handle(events: Vec<String>) -> u32 {
        events.len() as u32
    }
    fn describe() -> String {
        "elsewhere".into()
    }
}

export!(Elsewhere);
