//! Host-side bindings of the `superpeer:policy@0.1.0` world.

wasmtime::component::bindgen!({
    path: "../wit/0.1.0",
    world: "policy",
    additional_derives: [PartialEq, Eq],
});
