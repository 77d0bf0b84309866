//! The `pgmoat` command line: parses arguments and hands over to the library.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "pgmoat",
    version,
    about = "A PostgreSQL connection pooler with a TLS moat"
)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
