//! The `questech` binary: everything lives in the library crate.

#[tokio::main]
async fn main() {
    let code = questech::cli::run().await;
    std::process::exit(code);
}
