//! The module's command line written with clap (derive), for `scripts/cli-size.sh` to weigh against
//! `examples/cli_lexopt.rs` on armv7: the same options, parsed and printed, nothing else.

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "edgefilter", version)]
struct Cli {
    /// mqtt://host:port or mqtts://host:port
    #[arg(long)]
    mqtt_url: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The embedded hub, a simulated sensor and the module
    Local {
        #[arg(long, default_value_t = 1884)]
        port: u16,
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        #[arg(long)]
        messages: Option<u64>,
        #[arg(long)]
        twin: Option<std::path::PathBuf>,
        #[arg(long, default_value = "127.0.0.1:9600")]
        metrics: String,
    },
}

fn main() {
    println!("{:?}", Cli::parse());
}
