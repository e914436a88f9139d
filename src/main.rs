use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = pgid::cli::Cli::parse();
    pgid::cli::init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgid: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(pgid::cli::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let causes = pgid::errors::causes(e.as_ref());
            eprintln!("pgid: error: {}", causes.first().map_or("", String::as_str));
            for cause in causes.iter().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(2)
        }
    }
}
