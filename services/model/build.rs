//! Generates the ONNX protobuf types (`onnx.rs` in `OUT_DIR`) from the vendored `proto/onnx.proto`.
//! protox compiles the schema in pure Rust, so building needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let descriptors = protox::compile(["onnx.proto"], ["proto"])?;
    prost_build::Config::new()
        // The schema's comments contain indented prose that rustdoc would run as doctests; the
        // upstream schema is the documentation.
        .disable_comments(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
