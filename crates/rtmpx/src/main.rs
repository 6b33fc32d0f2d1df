//! `rtmpx`: the gateway binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

// Everything but the command line lives in the library target (so fuzz targets and tests
// reach the parsers); new modules go into lib.rs.
use rtmpx::config::{self, Config};
use rtmpx::{devcert, server};

#[derive(Parser)]
#[command(
    name = "rtmpx",
    version,
    about = "RTMP gateway: RTMP, RTMPS, RTMPT, RTMPTS, RTMPE, RTMPTE into one router",
    // `rtmpx --config FILE` is `rtmpx serve --config FILE`.
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Args, Default)]
struct ServeArgs {
    /// The TOML configuration file (config/rtmpx.toml documents every key); without it the
    /// embedded default runs (`rtmpx default-config` prints it).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Runtime worker threads (overrides server.worker_threads; 0 = one per core).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default command). Without --config the embedded default runs.
    Serve(ServeArgs),
    /// Validate a configuration file as `serve` would before starting (keys, values, address
    /// clashes, certificate and key files) and name the key that is wrong.
    CheckConfig {
        /// The TOML configuration file to check.
        file: PathBuf,
    },
    /// Print the embedded default configuration.
    DefaultConfig,
    /// Make a self-signed development certificate (and its local CA) for RTMPS.
    Cert {
        /// A name the certificate covers besides localhost, 127.0.0.1 and ::1 (repeatable).
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
        /// Where to write ca.pem, ca.key, cert.pem and key.pem (an existing CA there is reused).
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Instead: get the certificate of `[tls.acme]` in --config into its cache once (an
        /// order unless the cached one is still good), answering challenges on its listeners.
        #[arg(long, requires = "config", conflicts_with_all = ["hosts"])]
        acme: bool,
        /// The configuration file whose `[tls.acme]` section and listeners --acme uses.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve(cli.serve)) {
        Command::Serve(ServeArgs { config: config_path, threads }) => {
            init_logging();
            let config = match Config::load_or_default(config_path.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("rtmpx: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            match threads.unwrap_or(config.server.worker_threads) {
                0 => {}
                n => {
                    builder.worker_threads(n);
                }
            }
            let runtime = builder.enable_all().build().expect("tokio runtime");
            match runtime.block_on(server::serve(config, config_path)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("rtmpx: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { file } => match Config::load(&file)
            .and_then(|c| server::check_before_start(&c, &file.display().to_string()).map(|()| c))
        {
            Ok(c) => {
                println!("{}: ok ({} listeners, {} apps)", file.display(), c.listeners.len(), c.apps.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::DefaultConfig => {
            print!("{}", config::DEFAULT_CONFIG);
            ExitCode::SUCCESS
        }
        Command::Cert { acme: true, config: Some(path), .. } => {
            init_logging();
            let config = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("rtmpx: {e}");
                    return ExitCode::from(2);
                }
            };
            let runtime =
                tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
            match runtime.block_on(server::issue_acme_certificate(config)) {
                Ok(issued) => {
                    println!("names:   {}", issued.names.join(", "));
                    println!("serial:  {}", issued.serial);
                    println!("expires: in {}s", issued.not_after - now_secs());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("rtmpx: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Cert { hosts, dir, .. } => match devcert::generate(&dir, &hosts) {
            Ok(files) => {
                println!("certificate: {}", files.cert.display());
                println!("key:         {}", files.key.display());
                println!("local CA:    {}", files.ca_cert.display());
                println!("names:       {}", devcert::names(&hosts).join(", "));
                eprintln!(
                    "warning: this is a self-signed development certificate; players must skip verification \
                     or trust {} (never use it in production)",
                    files.ca_cert.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("rtmpx: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(ansi).init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_argument_has_a_help_text() {
        let cli = Cli::command();
        cli.clone().debug_assert();
        let mut missing = Vec::new();
        let mut commands = vec![cli];
        while let Some(command) = commands.pop() {
            for arg in command.get_arguments() {
                if arg.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                    missing.push(format!("{} {}", command.get_name(), arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("subcommand {}", sub.get_name()));
                }
            }
            commands.extend(command.get_subcommands().cloned());
        }
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }

    #[test]
    fn config_without_serve_means_serve() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map_err(|e| e.to_string());
        let cli = parse(&["rtmpx", "--config", "a.toml", "--threads", "2"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.config, Some(PathBuf::from("a.toml")));
        assert_eq!(cli.serve.threads, Some(2));
        let Some(Command::Serve(serve)) = parse(&["rtmpx", "serve", "-c", "b.toml"]).unwrap().command else {
            panic!("serve");
        };
        assert_eq!(serve.config, Some(PathBuf::from("b.toml")));
        assert!(parse(&["rtmpx", "--config", "a.toml", "check-config", "a.toml"]).is_err());
    }
}
