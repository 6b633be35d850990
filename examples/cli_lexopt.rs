//! The module's command line written with lexopt, as `src/main.rs` does, for `scripts/cli-size.sh`
//! to weigh against `examples/cli_clap.rs` on armv7: the same options, parsed and printed.

fn main() -> Result<(), lexopt::Error> {
    use lexopt::prelude::*;
    let mut args = lexopt::Parser::from_env();
    let (mut mqtt_url, mut local) = (None, None);
    let (mut port, mut interval_ms, mut messages, mut twin, mut metrics) =
        (1884u16, 1000u64, None::<u64>, None::<std::path::PathBuf>, "127.0.0.1:9600".to_string());
    while let Some(arg) = args.next()? {
        match arg {
            Short('h') | Long("help") => {
                println!("usage: edgefilter [--mqtt-url URL] [local [OPTIONS]]");
                return Ok(());
            }
            Short('V') | Long("version") => {
                println!("edgefilter 0.1.0");
                return Ok(());
            }
            Long("mqtt-url") => mqtt_url = Some(args.value()?.string()?),
            Value(v) if v == "local" => local = Some(()),
            Long("port") if local.is_some() => port = args.value()?.parse()?,
            Long("interval-ms") if local.is_some() => interval_ms = args.value()?.parse()?,
            Long("messages") if local.is_some() => messages = Some(args.value()?.parse()?),
            Long("twin") if local.is_some() => twin = Some(args.value()?.into()),
            Long("metrics") if local.is_some() => metrics = args.value()?.string()?,
            other => return Err(other.unexpected()),
        }
    }
    println!("{mqtt_url:?} {local:?} {port} {interval_ms} {messages:?} {twin:?} {metrics}");
    Ok(())
}
